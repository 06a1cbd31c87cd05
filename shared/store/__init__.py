"""Where state lives: database models and sessions, and the Redis adapters the tiers share."""
