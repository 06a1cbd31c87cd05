"""Money: budget reservations and settlement, the call bound, scopes, API keys, alerts and estimates."""
