"""`python -m shared.cli`: the same as the `model-router` command."""

from shared.cli import main

if __name__ == "__main__":
    main(prog_name="model-router")
