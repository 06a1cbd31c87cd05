"""Request models: they validate requests and, through web.openapi, document them (answers: web.responses)."""

from __future__ import annotations

import json
from datetime import UTC
from datetime import datetime
from typing import Annotated
from typing import Any
from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import Strict
from pydantic import ValidationInfo
from pydantic import WithJsonSchema
from pydantic import field_validator

StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]
StrictStr = Annotated[str, Strict()]
# Strict floats still take JSON integers (30 means 30.0) but never strings or booleans.
StrictNumber = Annotated[float, Strict()]

# Bounds of the fields no setting sizes (MAX_PROMPT_CHARS, MAX_METADATA_BYTES and MAX_BATCH_ITEMS size the
# others; /openapi.json shows the values in force). Names fit their columns.
MODEL_NAME_CHARS = 128
TIER_NAME_CHARS = 32
CALLBACK_URL_CHARS = 2048
MAX_CHAT_MESSAGES = 512
MAX_CONTENT_PARTS = 64
MESSAGE_NAME_CHARS = 64
MAX_STOP_SEQUENCES = 4
STOP_SEQUENCE_CHARS = 256
USER_CHARS = 256
CURSOR_CHARS = 256
TIME_PARAM_CHARS = 64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ModelName = Annotated[str, Strict(), Field(min_length=1, max_length=MODEL_NAME_CHARS)]
TierName = Annotated[str, Strict(), Field(min_length=1, max_length=TIER_NAME_CHARS)]
CallbackUrl = Annotated[str, Strict(), Field(min_length=1, max_length=CALLBACK_URL_CHARS)]


def _require_utf8(text: str) -> None:
    # JSON's \ud800-style escapes can smuggle in lone surrogates, which no UTF-8 store or client accepts.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None


class PromptFields(BaseModel):
    """What a prompt may say, alone or as a batch item. Unknown fields are rejected: a typo never passes."""

    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr = Field(
        min_length=1, description="The text to route; not only whitespace; at most MAX_PROMPT_CHARS."
    )
    max_tokens: StrictInt = Field(default=1000, ge=1, le=4096)
    preference: Literal["cost", "balanced", "quality"] = "balanced"
    model: ModelName | None = Field(default=None, description="Force a catalog model.")
    tier: TierName | None = Field(default=None, description='Force a tier ("cheap", "mid", "high").')
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Stored and returned as is; at most MAX_METADATA_BYTES serialized."
    )
    deadline_s: StrictNumber | None = Field(
        default=None, gt=0, le=600, description="Total time for retries, fallbacks and escalation (DEFAULT_DEADLINE_S)."
    )
    difficulty_estimator: Literal["heuristic", "learned"] | None = Field(
        default=None, description="How difficulty is scored for routing (DIFFICULTY_ESTIMATOR)."
    )
    on_rate_limit: Literal["wait", "fallback"] | None = Field(
        default=None,
        description='When the routed model is rate limited: "wait" for its turn within the deadline, or "fallback" '
        "to the next, pricier, model of its chain (RATE_LIMIT_POLICY).",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise ValueError("must contain more than whitespace")
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        _require_utf8(value)
        limit = (info.context or {}).get("max_prompt_chars")
        if limit is not None and len(value) > limit:
            raise ValueError(f"must be at most {limit} characters")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_small(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        serialized = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        _require_utf8(serialized)
        limit = (info.context or {}).get("max_metadata_bytes")
        if limit is not None and len(serialized.encode()) > limit:
            raise ValueError(f"must serialize to at most {limit} bytes")
        return value


class PromptRequest(PromptFields):
    """The body of POST /api/prompt."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"prompt": "What is 2 + 2?"}})

    wait: StrictBool = Field(default=True, description="Answer with the result when ready within timeout_s.")
    timeout_s: StrictNumber = Field(default=30, gt=0, le=120, description="Only with wait=true.")
    callback_url: CallbackUrl | None = Field(
        default=None,
        description="POSTed the finished job, signed (X-Router-Signature: sha256=<HMAC>); a public host only "
        "(or one in WEBHOOK_ALLOWED_HOSTS), stored encrypted.",
    )
    on_budget_pressure: Literal["fail", "downgrade"] = Field(
        default="fail",
        description="downgrade: when the budget cannot cover the routed tier, use the strongest tier it covers.",
    )
    cache: StrictBool = Field(
        default=True, description="false: neither answer from the response cache nor keep this answer in it."
    )


class BatchItem(PromptFields):
    """One batch item given as an object: the /api/prompt body without wait, timeout_s, callbacks or downgrade."""


class BatchRequest(BaseModel):
    """The body of POST /api/batch: 1..MAX_BATCH_ITEMS items, each a prompt string or an object."""

    model_config = ConfigDict(extra="forbid")

    # Items are checked one by one afterwards (each against BatchItem), so that an error names its index.
    prompts: Annotated[
        list[Any],
        WithJsonSchema(
            {
                "type": "array",
                "minItems": 1,
                "maxItems": 1000,
                "items": {"anyOf": [{"type": "string", "minLength": 1}, {"$ref": "#/components/schemas/BatchItem"}]},
            }
        ),
    ] = Field(min_length=1, max_length=10000)
    callback_url: CallbackUrl | None = Field(
        default=None, description="POSTed the finished batch, signed; the same rules as /api/prompt's."
    )


class ChatTextPart(BaseModel):
    """A text part of a message's content (the array form of `content`)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    """One turn of a chat: OpenAI's message object, text only."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    # Bounded by the validator below, which names the field whichever form failed; described here.
    content: Annotated[
        StrictStr | list[ChatTextPart] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string"},
                    {
                        "type": "array",
                        "maxItems": MAX_CONTENT_PARTS,
                        "items": {
                            "type": "object",
                            "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                            "required": ["type", "text"],
                        },
                    },
                    {"type": "null"},
                ],
                "description": "At most MAX_PROMPT_CHARS characters, and so are all messages together.",
            }
        ),
    ] = None
    name: Annotated[str, Strict(), Field(min_length=1, max_length=MESSAGE_NAME_CHARS)] | None = None

    @field_validator("content")
    @classmethod
    def _content_is_text(
        cls, value: str | list[ChatTextPart] | None, info: ValidationInfo
    ) -> str | list[ChatTextPart] | None:
        if isinstance(value, list) and len(value) > MAX_CONTENT_PARTS:
            raise ValueError(f"at most {MAX_CONTENT_PARTS} parts")
        texts = [value] if isinstance(value, str) else [part.text for part in value or []]
        for text in texts:
            if "\x00" in text:
                raise ValueError("must not contain NUL characters")
            _require_utf8(text)
        limit = (info.context or {}).get("max_prompt_chars")
        if limit is not None and sum(len(text) for text in texts) > limit:
            raise ValueError(f"must be at most {limit} characters")
        return value

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""


class ChatStreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """The body of POST /v1/chat/completions: OpenAI's request; fields the router cannot honour are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: ModelName = Field(description='"router" or "auto", "router:cost|balanced|quality", or a catalog model.')
    messages: list[ChatMessage] = Field(
        min_length=1,
        max_length=MAX_CHAT_MESSAGES,
        description="The conversation; its texts together hold at most MAX_PROMPT_CHARS characters.",
    )
    max_tokens: StrictInt | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1, le=4096)
    temperature: StrictNumber | None = Field(default=None, ge=0, le=2)
    top_p: StrictNumber | None = Field(default=None, ge=0, le=1)
    # Bounded by the validator below, which names the field whichever form failed; described here.
    stop: Annotated[
        StrictStr | list[StrictStr] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "maxLength": STOP_SEQUENCE_CHARS},
                    {
                        "type": "array",
                        "maxItems": MAX_STOP_SEQUENCES,
                        "items": {"type": "string", "maxLength": STOP_SEQUENCE_CHARS},
                    },
                    {"type": "null"},
                ]
            }
        ),
    ] = None
    n: Literal[1] | None = None
    user: Annotated[str, Strict(), Field(max_length=USER_CHARS)] | None = None
    seed: StrictInt | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: StrictNumber | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: StrictNumber | None = Field(default=None, ge=-2, le=2)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    stream: StrictBool | None = None
    stream_options: ChatStreamOptions | None = None
    # Not OpenAI's: sent as an extra body field (the SDK's `extra_body={"cache": False}`).
    cache: StrictBool = Field(
        default=True, description="false: neither answer from the response cache nor keep this answer in it."
    )

    @field_validator("stop")
    @classmethod
    def _few_short_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(len(stop) > STOP_SEQUENCE_CHARS for stop in stops):
            raise ValueError(f"each stop sequence must be at most {STOP_SEQUENCE_CHARS} characters")
        return value


# Query strings carry text only, so these models convert ("50" is 50) instead of being strict.
QueryDateTime = Annotated[
    datetime,
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": TIME_PARAM_CHARS,
            "description": "An ISO 8601 date or date and time; UTC when it has no zone.",
        }
    ),
]


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None


class JobSearchQuery(BaseModel):
    """The query string of GET /api/jobs; an empty parameter (`?status=`) is the same as a missing one."""

    model_config = ConfigDict(extra="ignore")

    status: Annotated[
        Literal["queued", "running", "succeeded", "failed"] | None,
        WithJsonSchema({"type": "string", "enum": ["queued", "running", "succeeded", "failed", ""]}),
    ] = None
    model: str | None = Field(
        default=None, max_length=MODEL_NAME_CHARS, description="The model that answered (`model_used`)."
    )
    tier: str | None = Field(default=None, max_length=TIER_NAME_CHARS, description="The tier that answered.")
    since: QueryDateTime | None = Field(default=None, description="Jobs created at or after this moment.")
    until: QueryDateTime | None = Field(default=None, description="Jobs created before this moment.")
    q: str | None = Field(
        default=None,
        max_length=1000,
        description=(
            "A case-insensitive substring of the prompt, or an exact job id. Served by an index on PostgreSQL; "
            "where none serves it (SQLite, or text without three letters or digits in a row) the search covers "
            "at most the 31 days before `until` (`since` defaults to then; a wider window is a 400)."
        ),
    )
    limit: int = Field(default=50, ge=1, le=200, description="Jobs per page.")
    cursor: str | None = Field(default=None, max_length=CURSOR_CHARS, description="`next_cursor` of the previous page.")

    @field_validator("status", "model", "tier", "since", "until", "q", "cursor", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("since", "until", mode="before")
    @classmethod
    def _short_time(cls, value: object) -> object:
        if isinstance(value, str) and len(value) > TIME_PARAM_CHARS:
            raise ValueError(f"must be at most {TIME_PARAM_CHARS} characters")
        return value

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return _as_utc(value)

    @field_validator("model", "tier", "q", "cursor")
    @classmethod
    def _storable_text(cls, value: str | None) -> str | None:
        # PostgreSQL refuses NUL in any string parameter; no stored value contains one.
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        if value is not None:
            _require_utf8(value)
        return value


class CostReportQuery(BaseModel):
    """The query string of GET /api/reports/costs."""

    model_config = ConfigDict(extra="ignore")

    period: Literal["week", "month"] = Field(
        default="month", description="week: the last 7 days including today; month: the current calendar month (UTC)."
    )


KEY_NAME_CHARS = 128
MAX_ALLOWED_MODELS = 64
# Money and rates an admin may set on a key: far above any real limit, low enough to stay exact in the ledger.
MAX_KEY_BUDGET = 1_000_000_000
MAX_KEY_RATE = 1_000_000_000
MAX_BUDGET_WINDOWS = 8
# "day", "week", or a rolling "<N>h" / "<N>d" (shared.ledger.window_spans also caps its length).
BudgetWindowName = Annotated[str, Strict(), Field(pattern=r"^(day|week|[1-9][0-9]{0,3}[hd])$")]


class KeySettings(BaseModel):
    """What an admin may set on an API key; null clears a limit (the global default then applies)."""

    model_config = ConfigDict(extra="forbid")

    monthly_budget: StrictNumber | None = Field(
        default=None, ge=0, le=MAX_KEY_BUDGET, description="The key's own monthly limit in US dollars."
    )
    rpm: StrictInt | None = Field(default=None, ge=1, le=MAX_KEY_RATE, description="Requests per minute.")
    tpm: StrictInt | None = Field(
        default=None, ge=1, le=MAX_KEY_RATE, description="Tokens per minute, counted from each request's bound."
    )
    expires_at: datetime | None = Field(
        default=None, description="From then on the key is refused (401); ISO 8601, read as UTC without a zone."
    )
    allowed_models: list[ModelName] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ALLOWED_MODELS,
        description="The only catalog models the key's jobs may call, fallbacks and escalation included; null: any.",
    )
    budget_windows: dict[BudgetWindowName, Annotated[StrictNumber, Field(ge=0, le=MAX_KEY_BUDGET)]] | None = Field(
        default=None,
        max_length=MAX_BUDGET_WINDOWS,
        description="Limits in US dollars over budget windows beside the month: `day` (UTC), `week` (from Monday, "
        'UTC), or a rolling `<N>h` / `<N>d` (at most 31 days), e.g. `{"day": 5, "6h": 2}`; null or {}: none.',
    )

    @field_validator("expires_at", mode="before")
    @classmethod
    def _text_only(cls, value: object) -> object:
        # pydantic would also read a number as a Unix time; the schema publishes an ISO 8601 string only.
        if value is not None and not isinstance(value, str):
            raise ValueError("expected an ISO 8601 date-time string")
        return value

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return value if value is None or value.tzinfo is not None else value.replace(tzinfo=UTC)


def _storable_name(value: str | None) -> str | None:
    """A key's name is stored as text: PostgreSQL refuses NUL, and a lone surrogate cannot be encoded."""
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if value is not None:
        _require_utf8(value)
    return value


class KeyCreateRequest(KeySettings):
    """POST /api/keys: a new key; the key itself is in the answer, once."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"name": "analytics", "tpm": 20000}})

    name: StrictStr = Field(min_length=1, max_length=KEY_NAME_CHARS, description="Who or what the key is for.")
    is_admin: StrictBool = Field(default=False, description="May manage keys and see every job and budget.")

    _name = field_validator("name")(_storable_name)


class KeyUpdateRequest(KeySettings):
    """PATCH /api/keys/{key_id}: only the fields sent change."""

    name: StrictStr | None = Field(default=None, min_length=1, max_length=KEY_NAME_CHARS)

    _name = field_validator("name")(_storable_name)
