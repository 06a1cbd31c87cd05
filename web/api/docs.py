"""GET /openapi.json, Swagger UI at /docs and ReDoc at /redoc, all served from local files."""

from __future__ import annotations

import json
import re
import secrets
from importlib import metadata
from pathlib import Path

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import render_template_string
from flask import send_from_directory
from flask import url_for
from swagger_ui_bundle import swagger_ui_path
from werkzeug.exceptions import NotFound

from web.openapi import build_openapi_spec
from web.openapi import downgrade_to_openapi_30

bp = Blueprint("docs", __name__)

REDOC_DIR = Path(__file__).resolve().parent.parent / "static" / "redoc"
# Only what the page loads (and the source maps browsers' tools ask for): the package also ships an
# index.html and swagger-initializer.js that point at the public petstore demo.
SWAGGER_ASSETS = frozenset(
    {
        "swagger-ui.css",
        "swagger-ui.css.map",
        "swagger-ui-bundle.js",
        "swagger-ui-bundle.js.map",
        "favicon-16x16.png",
        "favicon-32x32.png",
    }
)
EXTENSION_KEY = "openapi_documents"
# The pages may load nothing from another host: ReDoc 2's sidebar footer, for one, shows a logo from
# cdn.redoc.ly, which this policy blocks (ReDoc then drops the image). Styles stay inline-able because
# both viewers inject <style> elements; ReDoc runs its search index in a blob: worker.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
)

SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>model-router API: Swagger UI</title>
  <link rel="stylesheet" href="{{ url_for('docs.swagger_asset', filename='swagger-ui.css') }}">
  <link rel="icon" type="image/png" href="{{ url_for('docs.swagger_asset', filename='favicon-32x32.png') }}">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{{ url_for('docs.swagger_asset', filename='swagger-ui-bundle.js') }}"></script>
  <script nonce="{{ nonce }}">
    window.ui = SwaggerUIBundle({
      url: {{ spec_url|tojson }},
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
      // The default posts the document to validator.swagger.io for a badge: stay offline.
      validatorUrl: null
    });
  </script>
</body>
</html>
"""

REDOC_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>model-router API: ReDoc</title>
  <style>body { margin: 0; }</style>
</head>
<body>
  <div id="redoc"></div>
  <script src="{{ url_for('docs.redoc_asset') }}"></script>
  <script nonce="{{ nonce }}">
    // ReDoc's default theme names Google-hosted fonts; use the system's so nothing is fetched.
    var sans = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif";
    Redoc.init({{ spec_url|tojson }}, {
      theme: {
        typography: {
          fontFamily: sans,
          headings: { fontFamily: sans },
          code: { fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace" }
        }
      }
    }, document.getElementById("redoc"));
  </script>
</body>
</html>
"""


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """Answer the OpenAPI 3.1 document."""
    return _document("3.1")


@bp.get("/docs/openapi-3.0.json")
def openapi_30_json() -> Response:
    """Answer the same document rewritten as OpenAPI 3.0, for Swagger UI before version 5."""
    return _document("3.0")


@bp.get("/docs")
def swagger_ui() -> Response:
    """Answer the Swagger UI page."""
    spec_endpoint = "docs.openapi_json" if swagger_ui_reads_openapi_31() else "docs.openapi_30_json"
    return _page(SWAGGER_PAGE, spec_url=url_for(spec_endpoint))


@bp.get("/docs/assets/<path:filename>")
def swagger_asset(filename: str) -> Response:
    """Answer one of Swagger UI's files from the swagger-ui-bundle package."""
    if filename not in SWAGGER_ASSETS:
        raise NotFound()
    return send_from_directory(str(swagger_ui_path), filename)


@bp.get("/redoc")
def redoc() -> Response:
    """Answer the ReDoc page."""
    return _page(REDOC_PAGE, spec_url=url_for("docs.openapi_json"))


@bp.get("/redoc/assets/redoc.standalone.js")
def redoc_asset() -> Response:
    """Answer the vendored ReDoc bundle."""
    return send_from_directory(REDOC_DIR, "redoc.standalone.js")


def swagger_ui_reads_openapi_31() -> bool:
    """Tell whether the bundled Swagger UI renders OpenAPI 3.1 (it does from version 5)."""
    match = re.fullmatch(r"swagger-ui-(\d+)\..*", Path(str(swagger_ui_path)).name)
    return match is not None and int(match.group(1)) >= 5


def _page(template: str, *, spec_url: str) -> Response:
    nonce = secrets.token_urlsafe(16)
    response = Response(render_template_string(template, spec_url=spec_url, nonce=nonce), mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.format(nonce=nonce)
    return response


def _document(variant: str) -> Response:
    # Built on first use and kept per app: the models do not change while it runs.
    documents = current_app.extensions.get(EXTENSION_KEY)
    if documents is None:
        spec = build_openapi_spec(version=_api_version(), settings=current_app.extensions.get("settings"))
        documents = {
            "3.1": json.dumps(spec).encode(),
            "3.0": json.dumps(downgrade_to_openapi_30(spec)).encode(),
        }
        current_app.extensions[EXTENSION_KEY] = documents
    return Response(documents[variant], mimetype="application/json")


def _api_version() -> str:
    try:
        return metadata.version("model-router")
    except metadata.PackageNotFoundError:
        # Running from a checkout that was never installed.
        return "unknown"
