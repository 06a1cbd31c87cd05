"""Calls to the model servers: the OpenAI-SDK client, its retries, circuit breakers and admission control."""
