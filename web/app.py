"""The Flask app factory: settings, blueprints, error handlers and the per-process clients, wired once."""

from __future__ import annotations

import logging

from celery import Celery
from flask import Flask
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.middleware.proxy_fix import ProxyFix

from shared.config import Settings
from shared.config import exit_on_config_error
from shared.config import get_settings
from shared.errors import ConfigError
from shared.ledger import budget as budget_ledger
from shared.observability import logs
from shared.routing.catalog import load_catalog
from shared.store.session import make_sessionmaker
from shared.store.types import utcnow
from web import auth
from web import db
from web import errors
from web import metrics
from web import ratelimit
from web import request_ids
from web import request_telemetry
from web import waiter
from web.api import batch
from web.api import budget
from web.api import chat
from web.api import dashboard
from web.api import docs
from web.api import estimate
from web.api import health
from web.api import jobs
from web.api import keys
from web.api import prompt
from web.api import reports
from web.api import stats
from web.json_provider import ApiJSONProvider
from worker.celery_app import create_celery

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app: settings, database, Celery, blueprints, error handlers."""
    try:
        return _build_app(settings or get_settings())
    except ConfigError as error:
        exit_on_config_error(error)


def _build_app(settings: Settings) -> Flask:
    logs.configure(settings)
    app = Flask(__name__)
    app.json = ApiJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    if settings.trusted_proxies:
        # The client address (per-address limits, logs) is the one the trusted proxies saw.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    app.extensions["settings"] = settings
    app.extensions["catalog"] = load_catalog(settings.model_catalog_path)
    db.init_app(app, settings)
    if settings.budget_windows:
        _keep_service_window_history(app)
    _init_celery(app, settings)
    waiter.init_app(app, settings)
    auth.init_app(app, settings)
    # Registered after auth but placed first: every request, even one auth refuses, gets an id and a line.
    request_telemetry.init_app(app)
    request_ids.init_app(app)
    metered = (prompt.bp, batch.bp, estimate.bp, jobs.bp, budget.bp, stats.bp, reports.bp, chat.bp, keys.bp)
    ratelimit.init_app(app, settings, metered)
    for blueprint in (*metered, health.bp, health.probes, docs.bp, dashboard.bp):
        app.register_blueprint(blueprint)
    metrics.init_app(app)
    errors.register_error_handlers(app)
    return app


def _keep_service_window_history(app: Flask) -> None:
    """Count the service's spending before its budget windows were set, if its buckets do not yet hold it
    (shared.ledger.windows); a database that cannot be reached now leaves them to count from the next start."""
    try:
        with make_sessionmaker(app.extensions["db_engine"]).begin() as session:
            rebuilt = budget_ledger.count_window_history(
                session, scope=budget_ledger.GLOBAL_SCOPE, api_key_id=None, now=utcnow(), unless_kept=True
            )
    except SQLAlchemyError:
        logger.warning("budget windows: the service's earlier spending could not be counted (database unreachable)")
        return
    if rebuilt:
        logger.info("budget windows: the service's buckets were rebuilt from its jobs")


def _init_celery(app: Flask, settings: Settings) -> Celery:
    celery_app = create_celery(settings)
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app
