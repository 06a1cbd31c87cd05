"""Each Celery worker serves its own /metrics, so that Prometheus scrapes every worker pod, on every node.

The counters a worker records (jobs finished, upstream calls, tokens, cost: shared.observability.metrics) live
in its process. Across pods no directory is shared, so PROMETHEUS_MULTIPROC_DIR cannot collect them: with
WORKER_METRICS_PORT set, the worker process serves them itself, and the dashboards sum over pods (by labels
other than instance and pod). Production's pools (gevent, threads) run every job in the process that serves;
under the prefork pool jobs run in child processes, whose counters only PROMETHEUS_MULTIPROC_DIR gathers.
Gauges of shared state (queues, circuits, budgets) stay with the web tier (shared.observability.gauges).
"""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

logger = logging.getLogger(__name__)


def serve(port: int | None, *, addr: str = "0.0.0.0") -> WSGIServer | None:
    """Serve this process's metrics on `port` from a daemon thread; None if disabled (None, 0) or taken.

    A port already taken (two workers on one host) is logged, never fatal: the worker runs without it.
    """
    if not port:
        return None
    try:
        server, _ = start_http_server(port, addr=addr)
    except OSError:
        logger.warning("worker metrics cannot be served on port %d; the port is taken", port)
        return None
    logger.info("worker metrics served on port %d", port)
    return server
