"""Build /openapi.json from the models that validate requests and serialize answers.

A small builder rather than a Flask + pydantic library: the route table below names, for each operation, its
request model and the response model of each status, and pydantic's `models_json_schema` writes the
components. The libraries made for this (flask-openapi3, spectree, flask-smorest) would take over request
parsing and error answers, which web.requests and web.errors already own with the contract's own error shape,
and add a dependency for what is here about a hundred lines. The views answer through the same models
(web.responses, shared.jobs.views), so the document cannot drift from what the server sends;
tests/web/test_published_schema.py drives every route and status and validates the real bodies against it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode
from pydantic.json_schema import models_json_schema

from shared.config import Settings
from shared.jobs.idempotency import MAX_KEY_LENGTH
from web import responses
from web import schemas

OPENAPI_VERSION = "3.1.0"
OPENAPI_30_VERSION = "3.0.3"
REF_TEMPLATE = "#/components/schemas/{model}"
BEARER_SCHEME = "bearerAuth"

DESCRIPTION = (
    "Routes each prompt to the cheapest LLM tier likely to answer it well, inside a monthly budget.\n\n"
    'Every error is JSON: `{"error": {"code": "<snake_case>", "message": "...", "details": {...}}}`. '
    "When API keys are enabled, send `Authorization: Bearer <api key>`; otherwise no credentials are needed."
)
TAGS = (
    ("prompts", "Route prompts."),
    ("jobs", "Follow jobs."),
    ("batches", "Submit prompts in bulk."),
    ("budget", "The monthly budget."),
    ("stats", "Usage statistics."),
    ("keys", "API keys, managed by an admin key."),
    ("health", "Liveness of the stack."),
    ("openai", "OpenAI's chat completions API, routed."),
)


@dataclass(frozen=True)
class Answer:
    """One status of an operation: its model (None: no JSON body), prose, headers and other media types."""

    model: type[BaseModel] | None
    description: str
    headers: dict[str, Any] = field(default_factory=dict)
    other_media: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    tag: str
    summary: str
    answers: dict[int, Answer]
    description: str = ""
    request: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    parameters: tuple[dict[str, Any], ...] = ()


IDEMPOTENCY_KEY_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH}
RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}}
LOCATION = {"description": "The job's URL, the same as `poll_url`.", "schema": {"type": "string"}}


def _idempotency_key(description: str) -> dict[str, Any]:
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": description,
        "schema": IDEMPOTENCY_KEY_SCHEMA,
    }


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _error(description: str, **extra: Any) -> Answer:
    return Answer(responses.ErrorBody, description, **extra)


UNAUTHORIZED = _error("`unauthorized`: API keys are enabled and the bearer key is missing or unknown.")
RATE_LIMITED = _error(
    "`rate_limited`: too many requests from this key or address, or too many failed authentications "
    "from this address; retry after `Retry-After` seconds.",
    headers={"Retry-After": RETRY_AFTER},
)
PROMPT_ERRORS = {
    400: _error(
        "`invalid_request`: bad JSON, wrong types, out-of-range values, unknown model or tier; "
        "`details` names the field."
    ),
    401: UNAUTHORIZED,
    402: _error(
        "`budget_exceeded`: the monthly budget cannot cover it, or (`details.reason`: `usage_over_bound`) "
        "its spending is stopped because an upstream billed a job more than its bound, until an operator "
        "clears the hold. Nothing is enqueued or spent."
    ),
    403: _error(
        "`model_not_allowed`: it forces a model outside its key's `allowed_models`, or a tier none of them serves; "
        "`details` lists both."
    ),
    409: _error("`idempotency_conflict`: the Idempotency-Key was already used with a different body."),
    413: _error("`payload_too_large`: the request body is too large."),
    415: _error("`unsupported_media_type`: the body is not `application/json`."),
    429: RATE_LIMITED,
    503: _error("`unavailable`: the broker or the database is down; nothing is reserved or lost."),
}
JOB_NOT_FOUND = _error("`not_found`: no such job (or another key's job when keys are enabled).")
BATCH_NOT_FOUND = _error("`not_found`: no such batch (or another key's batch when keys are enabled).")


KEYS_ADMIN = "An admin key only (any key when API keys are off); another key is 403."
KEY_ERRORS = {
    401: UNAUTHORIZED,
    403: _error("`forbidden`: the bearer key is not an admin key."),
    429: RATE_LIMITED,
}
KEY_INVALID = _error("`invalid_request`: a field is missing, of the wrong type or out of range; `details` names it.")
KEY_NOT_FOUND = _error("`not_found`: no key has this id.")
KEY_ID = {
    "name": "key_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
}
KEY_LOCATION = {"description": "The new key's URL.", "schema": {"type": "string"}}


def _openai(answers: dict[int, Answer]) -> dict[int, Answer]:
    """The same errors in OpenAI's shape, as every answer under /v1 has them."""
    return {status: Answer(responses.OpenAIErrorBody, a.description, a.headers) for status, a in answers.items()}


# A budget scope named in the query string: `global` or `key:<id>`.
_SCOPE = {
    "name": "scope",
    "in": "query",
    "required": False,
    "description": "`global` or `key:<id>`; without it, the caller's own scope.",
    "schema": {"type": "string"},
}

OPERATIONS = (
    Operation(
        "post",
        "/api/prompt",
        "create_prompt",
        "prompts",
        "Route one prompt",
        description=(
            "With `wait=true` the answer is the finished job (200) if it is ready within "
            "`timeout_s`, else 202. With `wait=false` the answer is 202 at once; poll `poll_url`. "
            "A job whose upstream calls all failed still answers 200, with `status: failed`."
        ),
        parameters=(
            _idempotency_key(
                "The same key with the same body returns the same job and never makes a second "
                "upstream call; with a different body the answer is 409."
            ),
        ),
        request=schemas.PromptRequest,
        answers={
            200: Answer(responses.JobResult, "The job finished: succeeded, or failed after retries and fallbacks."),
            202: Answer(
                responses.JobAccepted,
                "Accepted but not finished (wait=false, or not ready within timeout_s).",
                headers={"Location": LOCATION},
            ),
            **PROMPT_ERRORS,
        },
    ),
    Operation(
        "post",
        "/api/estimate",
        "create_estimate",
        "prompts",
        "Estimate where a prompt would go and what it may cost",
        description=(
            "Takes the /api/prompt body. Answers the tier, model and difficulty the router would choose "
            "and the cost range: expected (one call with a typical answer length) and worst case (the "
            "bound that would be reserved, escalation included). Calls no upstream, reserves nothing."
        ),
        request=schemas.PromptRequest,
        answers={
            200: Answer(responses.EstimateView, "The routing and cost range."),
            **{status: PROMPT_ERRORS[status] for status in (400, 401, 403, 413, 415, 429)},
        },
    ),
    Operation(
        "get",
        "/api/jobs",
        "list_jobs",
        "jobs",
        "Search the request log",
        description=(
            "Newest first (created_at, then id, descending). Every filter narrows the result; a key "
            "sees only its own jobs, an admin key every job. Follow `next_cursor` for the next page."
        ),
        query=schemas.JobSearchQuery,
        answers={
            200: Answer(responses.JobPage, "A page of jobs."),
            400: _error("`invalid_request`: a parameter is malformed or out of range; `details` names it."),
            401: UNAUTHORIZED,
        },
    ),
    Operation(
        "get",
        "/api/jobs/{job_id}",
        "get_job",
        "jobs",
        "Get a job as stored",
        description="While queued or running only the state fields are set; once finished, the full result.",
        parameters=(_path_id("job_id"),),
        answers={200: Answer(responses.JobResult, "The job."), 401: UNAUTHORIZED, 404: JOB_NOT_FOUND},
    ),
    Operation(
        "delete",
        "/api/jobs/{job_id}",
        "cancel_job",
        "jobs",
        "Cancel a job that has not started",
        description="Releases its reservation; it ends `failed` with error code `cancelled`.",
        parameters=(_path_id("job_id"),),
        answers={
            200: Answer(responses.JobResult, "The cancelled job."),
            401: UNAUTHORIZED,
            404: JOB_NOT_FOUND,
            409: _error("`not_cancellable`: the job has already started or finished."),
        },
    ),
    Operation(
        "post",
        "/api/batch",
        "create_batch",
        "batches",
        "Submit up to 1000 prompts at once",
        description=(
            "Every item is validated first (a bad one rejects the batch, `details.index` names it), then "
            "the whole batch is reserved at once or refused with 402. Items run on their own workers, "
            "so a batch never delays single prompts. `callback_url` is POSTed the finished batch."
        ),
        parameters=(_idempotency_key("The same key with the same body returns the same batch; another body: 409."),),
        request=schemas.BatchRequest,
        answers={
            202: Answer(
                responses.BatchAccepted,
                "Accepted: the batch and its job ids, in submission order.",
                headers={"Location": {"description": "The batch's URL.", "schema": {"type": "string"}}},
            ),
            **PROMPT_ERRORS,
        },
    ),
    Operation(
        "get",
        "/api/batch/{batch_id}",
        "get_batch",
        "batches",
        "Get a batch: counts and jobs in submission order",
        parameters=(
            _path_id("batch_id"),
            {
                "name": "format",
                "in": "query",
                "required": False,
                "description": "`jsonl` streams the jobs as JSON Lines instead.",
                "schema": {"type": "string", "enum": ["json", "jsonl"]},
            },
        ),
        answers={
            200: Answer(
                responses.BatchResult,
                "The batch (JSON), or one job per line (JSON Lines, each line a JobResult).",
                other_media={"application/x-ndjson": {"schema": {"type": "string"}}},
            ),
            401: UNAUTHORIZED,
            404: BATCH_NOT_FOUND,
        },
    ),
    Operation(
        "delete",
        "/api/batch/{batch_id}",
        "cancel_batch",
        "batches",
        "Cancel the batch's jobs that have not started",
        description="Their reservations are released; jobs already running finish.",
        parameters=(_path_id("batch_id"),),
        answers={
            200: Answer(responses.BatchCancelled, "The batch after cancelling."),
            401: UNAUTHORIZED,
            404: BATCH_NOT_FOUND,
        },
    ),
    Operation(
        "get",
        "/api/budget",
        "get_budget",
        "budget",
        "Get this month's budget",
        description=(
            "`remaining = monthly_limit - total_spent - reserved`. With keys enabled, a key sees its "
            "own budget and an admin key the global one, or the scope `?scope=` names."
        ),
        parameters=(_SCOPE,),
        answers={
            200: Answer(responses.BudgetView, "The current UTC month's budget."),
            400: _error("`invalid_request`: an unknown scope."),
            401: UNAUTHORIZED,
            403: _error("`forbidden`: only an admin key may read another scope's budget."),
        },
    ),
    Operation(
        "delete",
        "/api/budget/hold",
        "clear_budget_hold",
        "budget",
        "Clear a budget hold",
        description=(
            "A job the upstream billed more than its bound holds its scopes for the month: they reserve "
            "nothing (402 `budget_exceeded`, `details.reason`: `usage_over_bound`) until an operator "
            "clears the hold here (keys off, or an admin key). Answers the scope's budget."
        ),
        parameters=(_SCOPE,),
        answers={
            200: Answer(responses.BudgetView, "The scope's budget, no longer held."),
            400: _error("`invalid_request`: an unknown scope."),
            401: UNAUTHORIZED,
            403: _error("`forbidden`: only an admin key may clear a hold."),
        },
    ),
    Operation(
        "get",
        "/api/stats",
        "get_stats",
        "stats",
        "Get request statistics",
        description="Totals and per-model figures; percentages are 0..100.",
        parameters=(
            {
                "name": "since",
                "in": "query",
                "required": False,
                "description": "Count only requests from this ISO 8601 date (or date and time) on.",
                "schema": {"type": "string"},
                "example": "2026-01-01",
            },
        ),
        answers={
            200: Answer(responses.StatsView, "The statistics."),
            400: _error("`invalid_request`: `since` is not an ISO 8601 date."),
            401: UNAUTHORIZED,
        },
    ),
    Operation(
        "get",
        "/api/reports/costs",
        "get_cost_report",
        "stats",
        "Get a cost report for this week or month",
        description=(
            "Totals, savings against the strongest tier, and the cost per day, model, tier and API key of "
            "the jobs created in the period (UTC). A key sees its own jobs, an admin key every job."
        ),
        query=schemas.CostReportQuery,
        answers={
            200: Answer(responses.CostReportView, "The report."),
            400: _error("`invalid_request`: `period` is neither `week` nor `month`."),
            401: UNAUTHORIZED,
        },
    ),
    Operation(
        "post",
        "/v1/chat/completions",
        "create_chat_completion",
        "openai",
        "Route a chat as OpenAI's chat completions API",
        description=(
            "The same job as /api/prompt, in OpenAI's request and answer shapes (`stream: true` answers "
            "server-sent events, each `data:` a ChatCompletionChunk, then `data: [DONE]`). Fields the router "
            "cannot honour are ignored; the router's own details come back in `x-router-*` headers. Errors take "
            "OpenAI's shape, with `param` naming the field."
        ),
        request=schemas.ChatCompletionRequest,
        answers={
            200: Answer(
                responses.ChatCompletion,
                "The answer (or, with `stream: true`, its chunks as SSE).",
                other_media={"text/event-stream": {"schema": {"type": "string"}}},
            ),
            **_openai(PROMPT_ERRORS),
            502: Answer(responses.OpenAIErrorBody, "The upstream failed the job for good."),
            504: Answer(responses.OpenAIErrorBody, "The job did not finish in time; it may still finish."),
        },
    ),
    Operation(
        "get",
        "/v1/models",
        "list_models",
        "openai",
        "List the models a chat may name",
        description="The router's aliases (`router`, `auto`, `router:<preference>`), then every catalog model.",
        answers={200: Answer(responses.ModelList, "The models."), **_openai({401: UNAUTHORIZED})},
    ),
    Operation(
        "get",
        "/api/keys",
        "list_keys",
        "keys",
        "List the API keys",
        description=KEYS_ADMIN,
        answers={200: Answer(responses.KeyList, "Every key, never the keys themselves."), **KEY_ERRORS},
    ),
    Operation(
        "post",
        "/api/keys",
        "create_key",
        "keys",
        "Create an API key",
        description=KEYS_ADMIN + " The answer carries the key itself, once: the database keeps only its hash.",
        request=schemas.KeyCreateRequest,
        answers={
            201: Answer(responses.CreatedKey, "The new key.", headers={"Location": KEY_LOCATION}),
            400: KEY_INVALID,
            **KEY_ERRORS,
            413: PROMPT_ERRORS[413],
            415: PROMPT_ERRORS[415],
        },
    ),
    Operation(
        "get",
        "/api/keys/{key_id}",
        "get_key",
        "keys",
        "Get an API key",
        description=KEYS_ADMIN,
        parameters=(KEY_ID,),
        answers={200: Answer(responses.KeyView, "The key."), **KEY_ERRORS, 404: KEY_NOT_FOUND},
    ),
    Operation(
        "patch",
        "/api/keys/{key_id}",
        "update_key",
        "keys",
        "Change an API key's name, limits, expiry or models",
        description=KEYS_ADMIN + " Only the fields sent change; null clears a limit. A revoked key is 400.",
        parameters=(KEY_ID,),
        request=schemas.KeyUpdateRequest,
        answers={
            200: Answer(responses.KeyView, "The key as changed."),
            400: KEY_INVALID,
            **KEY_ERRORS,
            404: KEY_NOT_FOUND,
            415: PROMPT_ERRORS[415],
        },
    ),
    Operation(
        "delete",
        "/api/keys/{key_id}",
        "revoke_key",
        "keys",
        "Revoke an API key",
        description=KEYS_ADMIN
        + " Every request with the key is 401 from then on; revoking twice keeps the first time.",
        parameters=(KEY_ID,),
        answers={200: Answer(responses.KeyView, "The revoked key."), **KEY_ERRORS, 404: KEY_NOT_FOUND},
    ),
    Operation(
        "get",
        "/api/health",
        "get_health",
        "health",
        "Check the database, the broker and the workers",
        answers={
            200: Answer(responses.HealthView, "The database and the broker answer."),
            503: Answer(responses.HealthView, "The database or the broker is unreachable; the check names it."),
        },
    ),
    Operation(
        "get",
        "/livez",
        "get_liveness",
        "health",
        "Liveness probe: the process serves (touches neither the database nor Redis)",
        answers={200: Answer(responses.LivenessView, "The process serves requests.")},
    ),
    Operation(
        "get",
        "/readyz",
        "get_readiness",
        "health",
        "Readiness probe: the database and the broker answer",
        answers={
            200: Answer(responses.ReadinessView, "The database and the broker answer."),
            503: Answer(responses.ReadinessView, "The database or the broker is down; the check names it."),
        },
    ),
)
# Described but not the body of any operation: referenced by BatchRequest's items, and the SSE chunk.
EXTRA_MODELS: tuple[tuple[type[BaseModel], JsonSchemaMode], ...] = (
    (schemas.BatchItem, "validation"),
    (responses.ChatCompletionChunk, "serialization"),
)
# Every route but health and the probes counts against the rate limits.
UNLIMITED_PATHS = frozenset({"/api/health", "/livez", "/readyz"})


def _models() -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    """Requests as pydantic validates them, answers as they are serialized; each once."""
    found: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for operation in OPERATIONS:
        if operation.request is not None:
            found[(operation.request, "validation")] = None
        for answer in operation.answers.values():
            if answer.model is not None:
                found[(answer.model, "serialization")] = None
    found.update(dict.fromkeys(EXTRA_MODELS))
    return list(found)


def build_openapi_spec(*, version: str, settings: Settings | None = None) -> dict[str, Any]:
    """Build the OpenAPI 3.1 document of the HTTP contract; `version` is the API's own version.

    The bounds that settings size (MAX_PROMPT_CHARS, MAX_METADATA_BYTES, MAX_BATCH_ITEMS) show the values of
    `settings`, or their defaults without it.
    """
    refs, top = models_json_schema(_models(), ref_template=REF_TEMPLATE)
    components = top.get("$defs", {})
    _show_limits(components, settings)

    def content(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return {"application/json": {"schema": dict(refs[(model, mode)])}}

    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        answers = dict(op.answers)
        if op.path not in UNLIMITED_PATHS:
            answers.setdefault(429, _openai({429: RATE_LIMITED})[429] if op.path.startswith("/v1/") else RATE_LIMITED)
        parameters = [*op.parameters, *(query_parameters(op.query) if op.query is not None else [])]
        operation: dict[str, Any] = {"operationId": op.operation_id, "tags": [op.tag], "summary": op.summary}
        if op.description:
            operation["description"] = op.description
        if parameters:
            operation["parameters"] = parameters
        if op.request is not None:
            operation["requestBody"] = {"required": True, "content": content(op.request, "validation")}
        operation["responses"] = {
            str(status): {
                "description": answer.description,
                **({"headers": answer.headers} if answer.headers else {}),
                "content": {
                    **(content(answer.model, "serialization") if answer.model is not None else {}),
                    **answer.other_media,
                },
            }
            for status, answer in answers.items()
        }
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "model-router", "version": version, "description": DESCRIPTION},
        "tags": [{"name": name, "description": text} for name, text in TAGS],
        "paths": paths,
        "components": {
            "schemas": components,
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
    for name, described in schema["properties"].items():
        field = dict(described)
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
