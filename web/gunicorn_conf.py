"""Gunicorn hooks the web tier needs whatever the command line says (`gunicorn -c python:web.gunicorn_conf`).

Gunicorn's master loads this module before it forks the gevent workers. The `web` package itself is empty (the
app is `web.app`), so loading this module does not import the app, whose modules gevent must patch first; a test
checks it. It imports no gunicorn code.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import multiprocess

from shared.observability import metrics


def child_exit(server: Any, worker: Any) -> None:
    """Tell prometheus_client a web worker is gone, so its live gauges stop being reported."""
    if metrics.multiprocess_dir() is not None:
        multiprocess.mark_process_dead(metrics.process_identifier(worker.pid))
