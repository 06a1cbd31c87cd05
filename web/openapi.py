"""Build the OpenAPI document for the HTTP contract from the pydantic models that validate requests."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode
from pydantic.json_schema import models_json_schema

from shared.config import Settings
from shared.jobs.idempotency import MAX_KEY_LENGTH
from web.schemas import BatchAccepted
from web.schemas import BatchItem
from web.schemas import BatchRequest
from web.schemas import BatchResult
from web.schemas import BudgetView
from web.schemas import ChatCompletion
from web.schemas import ChatCompletionRequest
from web.schemas import CostReportQuery
from web.schemas import CostReportView
from web.schemas import ErrorBody
from web.schemas import EstimateView
from web.schemas import HealthView
from web.schemas import JobAccepted
from web.schemas import JobPage
from web.schemas import JobResult
from web.schemas import JobSearchQuery
from web.schemas import OpenAIErrorBody
from web.schemas import PromptRequest
from web.schemas import StatsView

OPENAPI_VERSION = "3.1.0"
OPENAPI_30_VERSION = "3.0.3"
REF_TEMPLATE = "#/components/schemas/{model}"
BEARER_SCHEME = "bearerAuth"

# Requests are described as pydantic validates them, answers as they are serialized.
MODELS: tuple[tuple[type[BaseModel], JsonSchemaMode], ...] = (
    (PromptRequest, "validation"),
    (JobResult, "serialization"),
    (JobAccepted, "serialization"),
    (ErrorBody, "serialization"),
    (BudgetView, "serialization"),
    (StatsView, "serialization"),
    (HealthView, "serialization"),
    (EstimateView, "serialization"),
    (BatchRequest, "validation"),
    (BatchItem, "validation"),
    (BatchAccepted, "serialization"),
    (BatchResult, "serialization"),
    (JobPage, "serialization"),
    (CostReportView, "serialization"),
    (ChatCompletionRequest, "validation"),
    (ChatCompletion, "serialization"),
    (OpenAIErrorBody, "serialization"),
)

DESCRIPTION = (
    "Routes each prompt to the cheapest LLM tier likely to answer it well, inside a monthly budget.\n\n"
    'Every error is JSON: `{"error": {"code": "<snake_case>", "message": "...", "details": {...}}}`. '
    "When API keys are enabled, send `Authorization: Bearer <api key>`; otherwise no credentials are needed."
)


def build_openapi_spec(*, version: str, settings: Settings | None = None) -> dict[str, Any]:
    """Build the OpenAPI 3.1 document of the HTTP contract; `version` is the API's own version.

    The bounds that settings size (MAX_PROMPT_CHARS, MAX_METADATA_BYTES, MAX_BATCH_ITEMS) show the values of
    `settings`, or their defaults without it.
    """
    refs, top = models_json_schema(MODELS, ref_template=REF_TEMPLATE)
    schemas = top.get("$defs", {})
    _show_limits(schemas, settings)

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        mode = next(mode for candidate, mode in MODELS if candidate is model)
        return dict(refs[(model, mode)])

    def json_body(model: type[BaseModel], description: str, **extra: Any) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": ref(model)}}, **extra}

    def error(description: str, **extra: Any) -> dict[str, Any]:
        return json_body(ErrorBody, description, **extra)

    unauthorized = error("`unauthorized`: API keys are enabled and the bearer key is missing or unknown.")
    prompt_errors = {
        "400": error(
            "`invalid_request`: bad JSON, wrong types, out-of-range values, unknown model or tier; "
            "`details` names the field."
        ),
        "401": unauthorized,
        "402": error(
            "`budget_exceeded`: the monthly budget cannot cover it, or (`details.reason`: `usage_over_bound`) "
            "its spending is stopped because an upstream billed a job more than its bound, until an operator "
            "clears the hold. Nothing is enqueued or spent."
        ),
        "409": error("`idempotency_conflict`: the Idempotency-Key was already used with a different body."),
        "413": error("`payload_too_large`: the request body is too large."),
        "415": error("`unsupported_media_type`: the body is not `application/json`."),
        "429": error(
            "`rate_limited`: too many requests from this key or address, or too many failed authentications "
            "from this address; retry after `Retry-After` seconds.",
            headers={
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        ),
        "503": error("`unavailable`: the broker or the database is down; nothing is reserved or lost."),
    }
    paths: dict[str, Any] = {
        "/api/prompt": {
            "post": {
                "operationId": "create_prompt",
                "tags": ["prompts"],
                "summary": "Route one prompt",
                "description": (
                    "With `wait=true` the answer is the finished job (200) if it is ready within "
                    "`timeout_s`, else 202. With `wait=false` the answer is 202 at once; poll `poll_url`. "
                    "A job whose upstream calls all failed still answers 200, with `status: failed`."
                ),
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": (
                            "The same key with the same body returns the same job and never makes a second "
                            "upstream call; with a different body the answer is 409."
                        ),
                        "schema": IDEMPOTENCY_KEY_SCHEMA,
                    }
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref(PromptRequest)}}},
                "responses": {
                    "200": json_body(JobResult, "The job finished: succeeded, or failed after retries and fallbacks."),
                    "202": json_body(
                        JobAccepted,
                        "Accepted but not finished (wait=false, or not ready within timeout_s).",
                        headers={
                            "Location": {
                                "description": "The job's URL, the same as `poll_url`.",
                                "schema": {"type": "string"},
                            }
                        },
                    ),
                    **prompt_errors,
                },
            }
        },
        "/api/estimate": {
            "post": {
                "operationId": "create_estimate",
                "tags": ["prompts"],
                "summary": "Estimate where a prompt would go and what it may cost",
                "description": (
                    "Takes the /api/prompt body. Answers the tier, model and difficulty the router would choose "
                    "and the cost range: expected (one call with a typical answer length) and worst case (the "
                    "bound that would be reserved, escalation included). Calls no upstream, reserves nothing."
                ),
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref(PromptRequest)}}},
                "responses": {
                    "200": json_body(EstimateView, "The routing and cost range."),
                    **{
                        status: answer
                        for status, answer in prompt_errors.items()
                        if status in ("400", "401", "413", "415", "429")
                    },
                },
            }
        },
        "/api/jobs": {
            "get": {
                "operationId": "list_jobs",
                "tags": ["jobs"],
                "summary": "Search the request log",
                "description": (
                    "Newest first (created_at, then id, descending). Every filter narrows the result; a key "
                    "sees only its own jobs, an admin key every job. Follow `next_cursor` for the next page."
                ),
                "parameters": query_parameters(JobSearchQuery),
                "responses": {
                    "200": json_body(JobPage, "A page of jobs."),
                    "400": error("`invalid_request`: a parameter is malformed or out of range; `details` names it."),
                    "401": unauthorized,
                },
            }
        },
        "/api/jobs/{job_id}": {
            "get": {
                "operationId": "get_job",
                "tags": ["jobs"],
                "summary": "Get a job as stored",
                "description": "While queued or running only the state fields are set; once finished, the full result.",
                "parameters": [
                    {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": json_body(JobResult, "The job."),
                    "401": unauthorized,
                    "404": error("`not_found`: no such job (or another key's job when keys are enabled)."),
                },
            },
            "delete": {
                "operationId": "cancel_job",
                "tags": ["jobs"],
                "summary": "Cancel a job that has not started",
                "description": "Releases its reservation; it ends `failed` with error code `cancelled`.",
                "parameters": [
                    {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": json_body(JobResult, "The cancelled job."),
                    "401": unauthorized,
                    "404": error("`not_found`: no such job (or another key's job when keys are enabled)."),
                    "409": error("`not_cancellable`: the job has already started or finished."),
                },
            },
        },
        "/api/batch": {
            "post": {
                "operationId": "create_batch",
                "tags": ["batches"],
                "summary": "Submit up to 1000 prompts at once",
                "description": (
                    "Every item is validated first (a bad one rejects the batch, `details.index` names it), then "
                    "the whole batch is reserved at once or refused with 402. Items run on their own workers, "
                    "so a batch never delays single prompts. `callback_url` is POSTed the finished batch."
                ),
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "The same key with the same body returns the same batch; another body: 409.",
                        "schema": IDEMPOTENCY_KEY_SCHEMA,
                    }
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref(BatchRequest)}}},
                "responses": {
                    "202": json_body(
                        BatchAccepted,
                        "Accepted: the batch and its job ids, in submission order.",
                        headers={"Location": {"description": "The batch's URL.", "schema": {"type": "string"}}},
                    ),
                    **prompt_errors,
                },
            }
        },
        "/api/batch/{batch_id}": {
            "get": {
                "operationId": "get_batch",
                "tags": ["batches"],
                "summary": "Get a batch: counts and jobs in submission order",
                "parameters": [
                    {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "format",
                        "in": "query",
                        "required": False,
                        "description": "`jsonl` streams the jobs as JSON Lines instead.",
                        "schema": {"type": "string", "enum": ["json", "jsonl"]},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The batch (JSON), or one job per line (JSON Lines).",
                        "content": {
                            "application/json": {"schema": ref(BatchResult)},
                            "application/x-ndjson": {"schema": {"type": "string"}},
                        },
                    },
                    "401": unauthorized,
                    "404": error("`not_found`: no such batch (or another key's batch when keys are enabled)."),
                },
            },
            "delete": {
                "operationId": "cancel_batch",
                "tags": ["batches"],
                "summary": "Cancel the batch's jobs that have not started",
                "description": "Their reservations are released; jobs already running finish.",
                "parameters": [
                    {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": json_body(BatchResult, "The batch after cancelling."),
                    "401": unauthorized,
                    "404": error("`not_found`: no such batch (or another key's batch when keys are enabled)."),
                },
            },
        },
        "/api/budget": {
            "get": {
                "operationId": "get_budget",
                "tags": ["budget"],
                "summary": "Get this month's budget",
                "description": (
                    "`remaining = monthly_limit - total_spent - reserved`. With keys enabled, a key sees its "
                    "own budget and an admin key the global one."
                ),
                "responses": {"200": json_body(BudgetView, "The current UTC month's budget."), "401": unauthorized},
            }
        },
        "/api/budget/hold": {
            "delete": {
                "operationId": "clear_budget_hold",
                "tags": ["budget"],
                "summary": "Clear a budget hold",
                "description": (
                    "A job the upstream billed more than its bound holds its scopes for the month: they reserve "
                    "nothing (402 `budget_exceeded`, `details.reason`: `usage_over_bound`) until an operator "
                    "clears the hold here (keys off, or an admin key). Answers the scope's budget."
                ),
                "parameters": [
                    {
                        "name": "scope",
                        "in": "query",
                        "required": False,
                        "description": "`global` or `key:<id>`; without it, the caller's own scope.",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": json_body(BudgetView, "The scope's budget, no longer held."),
                    "400": error("`invalid_request`: an unknown scope."),
                    "401": unauthorized,
                    "403": error("`forbidden`: only an admin key may clear a hold."),
                },
            }
        },
        "/api/stats": {
            "get": {
                "operationId": "get_stats",
                "tags": ["stats"],
                "summary": "Get request statistics",
                "description": "Totals and per-model figures; percentages are 0..100.",
                "parameters": [
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "description": "Count only requests from this ISO 8601 date (or date and time) on.",
                        "schema": {"type": "string"},
                        "example": "2026-01-01",
                    }
                ],
                "responses": {
                    "200": json_body(StatsView, "The statistics."),
                    "400": error("`invalid_request`: `since` is not an ISO 8601 date."),
                    "401": unauthorized,
                },
            }
        },
        "/api/reports/costs": {
            "get": {
                "operationId": "get_cost_report",
                "tags": ["stats"],
                "summary": "Get a cost report for this week or month",
                "description": (
                    "Totals, savings against the strongest tier, and the cost per day, model, tier and API key of "
                    "the jobs created in the period (UTC). A key sees its own jobs, an admin key every job."
                ),
                "parameters": query_parameters(CostReportQuery),
                "responses": {
                    "200": json_body(CostReportView, "The report."),
                    "400": error("`invalid_request`: `period` is neither `week` nor `month`."),
                    "401": unauthorized,
                },
            }
        },
        "/v1/chat/completions": {
            "post": {
                "operationId": "create_chat_completion",
                "tags": ["openai"],
                "summary": "Route a chat as OpenAI's chat completions API",
                "description": (
                    "The same job as /api/prompt, in OpenAI's request and answer shapes (`stream: true` answers "
                    "server-sent events). Fields the router cannot honour are ignored; the router's own details "
                    "come back in `x-router-*` headers. Errors take OpenAI's shape, with `param` naming the field."
                ),
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref(ChatCompletionRequest)}},
                },
                "responses": {
                    "200": json_body(ChatCompletion, "The answer (or, with `stream: true`, its chunks as SSE)."),
                    **{
                        status: {**answer, "content": {"application/json": {"schema": ref(OpenAIErrorBody)}}}
                        for status, answer in prompt_errors.items()
                    },
                    "502": json_body(OpenAIErrorBody, "The upstream failed the job for good."),
                    "504": json_body(OpenAIErrorBody, "The job did not finish in time; it may still finish."),
                },
            }
        },
        "/api/health": {
            "get": {
                "operationId": "get_health",
                "tags": ["health"],
                "summary": "Check the database, the broker and the workers",
                "responses": {
                    "200": json_body(HealthView, "The database and the broker answer."),
                    "503": json_body(HealthView, "The database or the broker is unreachable; the check names it."),
                },
            }
        },
        "/livez": {
            "get": {
                "operationId": "get_liveness",
                "tags": ["health"],
                "summary": "Liveness probe: the process serves (touches neither the database nor Redis)",
                "responses": {"200": inline_json(PROBE_SCHEMA, "The process serves requests.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "get_readiness",
                "tags": ["health"],
                "summary": "Readiness probe: the database and the broker answer",
                "responses": {
                    "200": inline_json(READINESS_SCHEMA, "The database and the broker answer."),
                    "503": inline_json(READINESS_SCHEMA, "The database or the broker is down; the check names it."),
                },
            }
        },
    }
    # Every route but health and the probes counts against the rate limits and authenticates.
    for path, item in paths.items():
        if path not in UNMETERED_PATHS:
            for operation in item.values():
                operation["responses"].setdefault("429", prompt_errors["429"])
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "model-router", "version": version, "description": DESCRIPTION},
        "tags": [
            {"name": "prompts", "description": "Route prompts."},
            {"name": "jobs", "description": "Follow jobs."},
            {"name": "budget", "description": "The monthly budget."},
            {"name": "stats", "description": "Usage statistics."},
            {"name": "health", "description": "Liveness of the stack."},
            {"name": "openai", "description": "OpenAI's chat completions API, routed."},
        ],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                BEARER_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key; required only when keys are enabled.",
                }
            },
        },
        # The empty requirement makes the key optional: deployments without keys need none.
        "security": [{}, {BEARER_SCHEME: []}],
    }


IDEMPOTENCY_KEY_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH}
UNMETERED_PATHS = ("/api/health", "/livez", "/readyz")
_CHECK = {"type": "string", "enum": ["ok", "unreachable"]}
PROBE_SCHEMA = {"type": "object", "properties": {"status": {"type": "string", "enum": ["ok"]}}, "required": ["status"]}
READINESS_SCHEMA = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "checks": {
            "type": "object",
            "properties": {"database": _CHECK, "broker": _CHECK},
            "required": ["database", "broker"],
        },
    },
    "required": ["status", "checks"],
}


def inline_json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """Describe a JSON answer whose schema has no pydantic model (the probes')."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _show_limits(schemas: dict[str, Any], settings: Settings | None) -> None:
    """Write the bounds that settings size into the request schemas, which validators enforce from context."""
    fields = Settings.model_fields
    prompt_chars = settings.max_prompt_chars if settings else fields["max_prompt_chars"].default
    metadata_bytes = settings.max_metadata_bytes if settings else fields["max_metadata_bytes"].default
    batch_items = settings.max_batch_items if settings else fields["max_batch_items"].default
    for name in ("PromptRequest", "BatchItem"):
        properties = schemas[name]["properties"]
        properties["prompt"]["maxLength"] = prompt_chars
        properties["metadata"]["description"] = f"Stored and returned as is; at most {metadata_bytes} bytes serialized."
    prompts = schemas["BatchRequest"]["properties"]["prompts"]
    prompts["maxItems"] = batch_items
    prompts["items"]["anyOf"][0]["maxLength"] = prompt_chars
    content = schemas["ChatMessage"]["properties"]["content"]
    content["anyOf"][0]["maxLength"] = prompt_chars
    content["anyOf"][1]["items"]["properties"]["text"]["maxLength"] = prompt_chars
    content["description"] = f"At most {prompt_chars} characters, and so are all messages together."
    messages = schemas["ChatCompletionRequest"]["properties"]["messages"]
    messages["description"] = f"The conversation; its texts together hold at most {prompt_chars} characters."


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Describe a query-string model's fields as optional OpenAPI query parameters."""
    schema = model.model_json_schema(mode="validation")
    parameters = []
    for name, field in schema["properties"].items():
        field = dict(field)
        description = field.pop("description", None)
        field.pop("title", None)
        # An optional parameter is simply left out; the query string has no null.
        branches = [branch for branch in field.pop("anyOf", []) if branch != {"type": "null"}]
        if len(branches) == 1:
            field.update(branches[0])
        if field.get("default", "") is None:
            del field["default"]
        parameter = {"name": name, "in": "query", "required": False, "schema": field}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def downgrade_to_openapi_30(spec: dict[str, Any]) -> dict[str, Any]:
    """Rewrite an OpenAPI 3.1 document produced by build_openapi_spec as OpenAPI 3.0.

    Only for viewers that cannot read 3.1 (Swagger UI before 5). It covers the JSON Schema that
    pydantic emits for our models: `null` in `anyOf` or `type` becomes `nullable`, `const` becomes a
    one-value `enum`, numeric `exclusiveMinimum`/`exclusiveMaximum` become the 3.0 boolean form, and
    `examples` becomes `example`.
    """
    spec = copy.deepcopy(spec)
    spec["openapi"] = OPENAPI_30_VERSION
    spec.pop("jsonSchemaDialect", None)
    spec.pop("webhooks", None)
    spec["info"].pop("summary", None)
    components = spec.get("components", {})
    components["schemas"] = {name: _schema_30(schema) for name, schema in components.get("schemas", {}).items()}
    for path_item in spec.get("paths", {}).values():
        for operation in path_item.values():
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _schema_30(parameter["schema"])
            body = operation.get("requestBody", {})
            for media in body.get("content", {}).values():
                media["schema"] = _schema_30(media["schema"])
            for response in operation.get("responses", {}).values():
                for media in response.get("content", {}).values():
                    media["schema"] = _schema_30(media["schema"])
                for header in response.get("headers", {}).values():
                    header["schema"] = _schema_30(header["schema"])
    return spec


def _schema_30(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return schema  # `additionalProperties: true` and the like
    schema = dict(schema)
    for key in ("properties", "patternProperties"):
        if key in schema:
            schema[key] = {name: _schema_30(sub) for name, sub in schema[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if key in schema:
            schema[key] = _schema_30(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [_schema_30(sub) for sub in schema[key]]
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = schema.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            schema[bound] = value
            schema[key] = True
    if "examples" in schema:
        examples = schema.pop("examples")
        if examples:
            schema.setdefault("example", examples[0])
    if isinstance(schema.get("type"), list):
        types = [kind for kind in schema["type"] if kind != "null"]
        if len(types) < len(schema["type"]):
            schema["nullable"] = True
        schema["type"] = types[0] if len(types) == 1 else types
    for key in ("anyOf", "oneOf"):
        if key in schema:
            _fold_null(schema, key)
    return schema


def _fold_null(schema: dict[str, Any], key: str) -> None:
    """Replace a `{"type": "null"}` branch of `anyOf`/`oneOf` with `nullable: true`."""
    branches = [branch for branch in schema[key] if branch != {"type": "null"}]
    if len(branches) == len(schema[key]):
        return
    schema["nullable"] = True
    if len(branches) != 1:
        schema[key] = branches
        return
    del schema[key]
    (branch,) = branches
    if "$ref" in branch:
        # In 3.0 a $ref ignores its siblings, so `nullable` needs the reference wrapped.
        schema["allOf"] = [branch]
    else:
        schema.update({name: value for name, value in branch.items() if name not in schema})
        if "enum" in schema and None not in schema["enum"]:
            # 3.0.3 clarifies that `nullable` does not widen an enum: null must be listed.
            schema["enum"] = [*schema["enum"], None]
