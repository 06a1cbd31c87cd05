"""Run the simulator as a process: `model-router simulate`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

from aiohttp import web

from shared import config
from shared.devstack.simulator import app as sim_app
from shared.devstack.simulator import sim_settings
from shared.errors import ConfigError
from shared.routing import catalog as catalog_module

# Hung "timeout" faults must not hold up a shutdown for the default minute.
SHUTDOWN_TIMEOUT_S = 1.0


def _fail(message: str, *, code: int) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(code)


def serve(*, host: str, port: int) -> None:
    """Serve the simulator on host:port until SIGINT or SIGTERM; exit 2 with one line on a bad setting."""
    # The full Settings would demand an OpenAI key the simulator never uses, so read only what it needs.
    catalog_path = Path(os.environ.get("MODEL_CATALOG_PATH") or config.DEFAULT_CATALOG_PATH)
    try:
        catalog = catalog_module.load_catalog(catalog_path)
        settings = sim_settings.from_env()
    except (ConfigError, ValueError) as exc:
        _fail(str(exc), code=2)
    app = sim_app.create_sim_app(catalog=catalog, settings=settings)

    def announce(_message: str) -> None:
        print(
            f"simulator serving {len(catalog.models)} models on http://{host}:{port}",
            file=sys.stderr,
            flush=True,
        )

    try:
        web.run_app(
            app,
            host=host,
            port=port,
            access_log=None,
            print=announce,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            handle_signals=True,
        )
    except OSError as exc:
        _fail(f"cannot serve on {host}:{port}: {exc.strerror or exc}", code=1)
