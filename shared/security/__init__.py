"""Secrets and outbound safety: masked URLs, encrypted callback URLs and where webhooks may go."""
