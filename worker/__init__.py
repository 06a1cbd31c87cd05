"""Celery workers: thin tasks that run the shared job use cases."""
