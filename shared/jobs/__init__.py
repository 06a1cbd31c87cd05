"""A job's life: accept, run, finish, cancel and reap; batches, idempotency, webhooks, views and search."""
