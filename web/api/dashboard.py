"""GET /dashboard: the operator page; it reads the JSON API from the browser with the operator's key."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint
from flask import Response
from flask import send_from_directory

bp = Blueprint("dashboard", __name__)

PAGE_DIR = Path(__file__).resolve().parent.parent / "static" / "dashboard"
# Everything comes from this server: scripts and styles are files (no inline code), and the page only
# talks to the API beside it. Chart.js sizes its canvases through element.style, which CSP allows.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)


@bp.get("/dashboard")
def dashboard() -> Response:
    """Answer the dashboard page; its data comes from /api/* requests made by the page itself."""
    response = send_from_directory(PAGE_DIR, "index.html", max_age=0)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
