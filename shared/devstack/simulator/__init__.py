"""An OpenAI-compatible upstream simulator for demos, tests and benchmarks."""
