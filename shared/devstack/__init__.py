"""The local stack: `make run`, the demo and the OpenAI-compatible upstream simulator."""
