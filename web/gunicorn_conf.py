"""Gunicorn settings the web tier needs whatever the command line says (`gunicorn -c python:web.gunicorn_conf`)."""

from __future__ import annotations

from typing import Any

from prometheus_client import multiprocess

from shared import metrics


def child_exit(server: Any, worker: Any) -> None:
    """Tell prometheus_client a web worker is gone, so its live gauges stop being reported."""
    if metrics.multiprocess_dir() is not None:
        multiprocess.mark_process_dead(worker.pid)
