"""The Flask tier: validates prompts, reserves budget, enqueues jobs and answers them (the app: web.app)."""
