"""The API documents: /openapi.json, Swagger UI at /docs and ReDoc at /redoc, all served locally."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.config import Settings
from tests.conftest import make_test_settings
from web.api import docs
from web.openapi import build_openapi_spec
from web.openapi import downgrade_to_openapi_30
from web.openapi import query_parameters
from web.schemas import JobSearchQuery
from web.schemas import PromptRequest

CONTRACT_OPERATIONS = {
    ("/api/prompt", "post"),
    ("/api/estimate", "post"),
    ("/api/jobs", "get"),
    ("/api/jobs/{job_id}", "get"),
    ("/api/jobs/{job_id}", "delete"),
    ("/api/batch", "post"),
    ("/api/batch/{batch_id}", "get"),
    ("/api/batch/{batch_id}", "delete"),
    ("/api/budget", "get"),
    ("/api/budget/hold", "delete"),
    ("/api/stats", "get"),
    ("/api/reports/costs", "get"),
    ("/api/health", "get"),
    ("/api/keys", "get"),
    ("/api/keys", "post"),
    ("/api/keys/{key_id}", "get"),
    ("/api/keys/{key_id}", "patch"),
    ("/api/keys/{key_id}", "delete"),
    ("/livez", "get"),
    ("/readyz", "get"),
    ("/v1/chat/completions", "post"),
    ("/v1/models", "get"),
}
REQUEST_SCHEMAS = ("PromptRequest", "BatchRequest", "BatchItem", "ChatCompletionRequest")
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
SCRIPT_TYPES = {"application/javascript", "text/javascript"}


class _References(HTMLParser):
    """Collect every src= and href= of a page, with the tag that holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            if values.get(name) is not None:
                self.found.append((tag, values.get("rel") or "", values[name] or ""))


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.register_blueprint(docs.bp)
    return app


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as client:
        yield client


def _get_json(client: FlaskClient, url: str) -> dict[str, Any]:
    with client.get(url) as response:
        assert response.status_code == 200
        assert response.mimetype == "application/json"
        return response.get_json()


def _page(client: FlaskClient, url: str) -> str:
    with client.get(url) as response:
        assert response.status_code == 200
        assert response.mimetype == "text/html"
        return response.get_data(as_text=True)


def _references(page: str) -> list[tuple[str, str, str]]:
    parser = _References()
    parser.feed(page)
    return parser.found


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_openapi_json_is_openapi_3_1(client: FlaskClient) -> None:
    spec = _get_json(client, "/openapi.json")
    assert spec["openapi"].startswith("3.1.")
    assert spec["info"]["title"] == "model-router"
    assert spec["info"]["description"]


def test_openapi_json_has_every_contract_operation_and_no_other(client: FlaskClient) -> None:
    spec = _get_json(client, "/openapi.json")
    operations = {(path, method) for path, item in spec["paths"].items() for method in item if method in HTTP_METHODS}
    assert operations == CONTRACT_OPERATIONS


def test_openapi_prompt_request_is_the_validating_model(client: FlaskClient) -> None:
    spec = _get_json(client, "/openapi.json")
    validating = PromptRequest.model_json_schema()
    validating["properties"]["prompt"]["maxLength"] = Settings.model_fields["max_prompt_chars"].default
    validating["properties"]["metadata"]["description"] = "Stored and returned as is; at most 4096 bytes serialized."
    assert spec["components"]["schemas"]["PromptRequest"] == validating
    body = spec["paths"]["/api/prompt"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PromptRequest"}


def test_openapi_prompt_documents_every_contract_answer(client: FlaskClient) -> None:
    operation = _get_json(client, "/openapi.json")["paths"]["/api/prompt"]["post"]
    assert set(operation["responses"]) == {"200", "202", "400", "401", "402", "403", "409", "413", "415", "429", "503"}
    assert "Location" in operation["responses"]["202"]["headers"]
    assert "Retry-After" in operation["responses"]["429"]["headers"]
    headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
    assert headers["Idempotency-Key"]["required"] is False


def test_openapi_bearer_key_is_declared_and_optional(client: FlaskClient) -> None:
    spec = _get_json(client, "/openapi.json")
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert {} in spec["security"]
    assert {"bearerAuth": []} in spec["security"]


@pytest.mark.parametrize("url", ["/openapi.json", "/docs/openapi-3.0.json"])
def test_openapi_every_ref_resolves(client: FlaskClient, url: str) -> None:
    spec = _get_json(client, url)
    schemas = spec["components"]["schemas"]
    refs = set(_refs(spec))
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in schemas
    assert "$defs" not in str(spec)


def test_openapi_json_is_built_once_per_app(app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def counting_build(*, version: str, settings: Settings | None = None) -> dict[str, Any]:
        calls.append(version)
        return build_openapi_spec(version=version, settings=settings)

    monkeypatch.setattr(docs, "build_openapi_spec", counting_build)
    first = _get_json(client, "/openapi.json")
    assert _get_json(client, "/openapi.json") == first
    _get_json(client, "/docs/openapi-3.0.json")
    assert len(calls) == 1


def test_openapi_30_rewrite_keeps_the_operations_and_drops_31_schema_forms(client: FlaskClient) -> None:
    spec = _get_json(client, "/docs/openapi-3.0.json")
    assert spec["openapi"].startswith("3.0.")
    assert {(path, method) for path, item in spec["paths"].items() for method in item} == CONTRACT_OPERATIONS
    text = str(spec)
    assert "'null'" not in text
    assert "'const'" not in text
    timeout = spec["components"]["schemas"]["PromptRequest"]["properties"]["timeout_s"]
    assert (timeout["minimum"], timeout["exclusiveMinimum"]) == (0, True)


def test_openapi_30_rewrite_makes_nullable_references_and_enums() -> None:
    schemas = downgrade_to_openapi_30(build_openapi_spec(version="1"))["components"]["schemas"]
    job = schemas["JobResult"]["properties"]
    assert job["error"]["nullable"] is True
    assert job["error"]["allOf"] == [{"$ref": "#/components/schemas/ErrorDetail"}]
    assert job["difficulty_level"]["enum"] == ["easy", "medium", "hard", None]
    assert (job["finished_at"]["type"], job["finished_at"]["nullable"]) == ("string", True)


@pytest.mark.parametrize("url", ["/docs", "/redoc"])
def test_docs_page_references_only_local_paths(client: FlaskClient, url: str) -> None:
    page = _page(client, url)
    assert "<title>" in page
    assert "http://" not in page
    assert "https://" not in page
    references = _references(page)
    assert references
    for _tag, _rel, target in references:
        assert target.startswith("/")
        assert not target.startswith("//")


@pytest.mark.parametrize("url", ["/docs", "/redoc"])
def test_docs_page_policy_blocks_other_hosts(client: FlaskClient, url: str) -> None:
    with client.get(url) as response:
        policy = response.headers["Content-Security-Policy"]
        page = response.get_data(as_text=True)
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["img-src"] == "'self' data:"
    assert directives["connect-src"] == "'self'"
    nonce = directives["script-src"].removeprefix("'self' 'nonce-").removesuffix("'")
    assert page.count(f'<script nonce="{nonce}">') == 1


@pytest.mark.parametrize("url", ["/docs", "/redoc"])
def test_docs_page_assets_answer_with_their_content_type(client: FlaskClient, url: str) -> None:
    kinds = []
    for tag, rel, target in _references(_page(client, url)):
        with client.get(target) as response:
            assert response.status_code == 200, target
            if tag == "script":
                assert response.mimetype in SCRIPT_TYPES, target
            elif rel == "stylesheet":
                assert response.mimetype == "text/css", target
            else:
                assert response.mimetype.startswith("image/"), target
            assert response.get_data()
        kinds.append(tag)
    assert "script" in kinds


def test_swagger_page_loads_a_document_its_swagger_ui_can_read(client: FlaskClient) -> None:
    page = _page(client, "/docs")
    expected = "/openapi.json" if docs.swagger_ui_reads_openapi_31() else "/docs/openapi-3.0.json"
    assert f'url: "{expected}"' in page
    assert "validatorUrl: null" in page
    assert _get_json(client, expected)["paths"]


def test_redoc_page_loads_openapi_json_without_web_fonts(client: FlaskClient) -> None:
    page = _page(client, "/redoc")
    assert 'Redoc.init("/openapi.json"' in page
    assert "fonts.googleapis" not in page


@pytest.mark.parametrize("name", ["index.html", "swagger-initializer.js", "../__init__.py"])
def test_swagger_assets_serve_only_what_the_page_needs(client: FlaskClient, name: str) -> None:
    with client.get(f"/docs/assets/{name}") as response:
        assert response.status_code == 404


def _unbounded(schema: Any, schemas: dict[str, Any], where: str) -> Iterator[str]:
    """Yield the places in `schema` where a string, array or integer has no upper bound."""
    if not isinstance(schema, dict):
        return
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name not in REQUEST_SCHEMAS:  # a request model is checked on its own
            yield from _unbounded(schemas[name], schemas, f"{where}->{name}")
        return
    kind = schema.get("type")
    if "enum" not in schema and "const" not in schema:
        if kind == "string" and "maxLength" not in schema:
            yield where
        if kind == "array" and "maxItems" not in schema:
            yield where
        if kind == "integer" and "maximum" not in schema:
            yield where
    for key in ("anyOf", "oneOf", "allOf"):
        for index, branch in enumerate(schema.get(key, [])):
            yield from _unbounded(branch, schemas, f"{where}[{index}]")
    if isinstance(schema.get("items"), dict):
        yield from _unbounded(schema["items"], schemas, f"{where}[]")
    for name, sub in schema.get("properties", {}).items():
        yield from _unbounded(sub, schemas, f"{where}.{name}")


def test_every_request_field_is_bounded_in_the_document(client: FlaskClient) -> None:
    schemas = _get_json(client, "/openapi.json")["components"]["schemas"]
    found = [place for name in REQUEST_SCHEMAS for place in _unbounded(schemas[name], schemas, name)]
    found += [
        place
        for parameter in query_parameters(JobSearchQuery)
        for place in _unbounded(parameter["schema"], schemas, f"GET /api/jobs?{parameter['name']}")
    ]
    assert found == []
    # The one object without a schema of its own is bounded in bytes, as its description says.
    assert "4096 bytes" in schemas["PromptRequest"]["properties"]["metadata"]["description"]


def test_the_document_shows_the_limits_in_force(tmp_path) -> None:
    settings = make_test_settings(
        f"sqlite:///{tmp_path}/r.db", max_prompt_chars=1234, max_batch_items=7, max_metadata_bytes=99
    )
    schemas = build_openapi_spec(version="1", settings=settings)["components"]["schemas"]
    assert schemas["PromptRequest"]["properties"]["prompt"]["maxLength"] == 1234
    assert schemas["BatchItem"]["properties"]["prompt"]["maxLength"] == 1234
    assert schemas["BatchRequest"]["properties"]["prompts"]["maxItems"] == 7
    assert "99 bytes" in schemas["BatchItem"]["properties"]["metadata"]["description"]
    assert schemas["ChatMessage"]["properties"]["content"]["anyOf"][0]["maxLength"] == 1234
