"""`make bench-compare`: bench.throughput with LiteLLM's proxy loaded side by side, and the ratios printed.

LiteLLM is installed (by name, from PyPI) into its own virtual environment, /tmp/litellm-venv, on first use,
and configured with the catalog's models pointing at the same simulator. Takes bench.throughput's options.
"""

from __future__ import annotations

from bench.throughput import main

if __name__ == "__main__":
    main(compare=True)
