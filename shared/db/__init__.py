"""Persistence: declarative models, sessions and migrations."""
