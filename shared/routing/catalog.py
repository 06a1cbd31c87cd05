"""The model catalog: which models serve which tier, at what price, behind which servers.

Tiers are ordered from weakest to strongest, and their prices must follow that order (`_check_price_order`): a
call routed to a weaker tier then never costs more than the same call on the strongest tier, so what routing
saves (shared.reports.savings) is never negative.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Set
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import ValidationError
from pydantic import field_validator
from pydantic import model_validator

from shared.errors import ConfigError
from shared.errors import RoutingError

# Costs are kept in whole nano-dollars; a price per 1K tokens with at most 6 decimals makes every
# per-token cost an exact number of nano-dollars.
PRICE_DECIMALS = 6
# The context window of a model whose entry names none: above every model's today, so that only usage no
# model can have (shared.upstream.answer_schema) is refused for it.
DEFAULT_CONTEXT_WINDOW = 2_000_000
# Example catalogs shipped beside the default one (shared/routing/models.toml).
CATALOGS_DIR = Path(__file__).parent / "catalogs"


# An environment variable's name: a deployment's key is read from the environment, never written in the catalog.
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _DeploymentEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9._-]+$")
    base_url: str | None = None
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME)
    # Its share of the model's calls when every deployment is equally busy.
    weight: Decimal = Field(default=Decimal(1), gt=0, le=1000)
    # The name the server knows the model by (an Azure deployment's, a vLLM's served name); default the model's.
    upstream_model: str | None = Field(default=None, min_length=1)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _http_url(value)


class _ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    tier: str = Field(min_length=1)
    input_per_1k: Decimal = Field(ge=0)
    output_per_1k: Decimal = Field(ge=0)
    base_url: str | None = None
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME)
    supports_logprobs: bool = True
    # The most tokens a prompt to it can have: usage reporting more cannot be true.
    context_window: int = Field(default=DEFAULT_CONTEXT_WINDOW, gt=0, lt=2**31)
    # None: the default chain (the tier's other models, then the next tier up); []: no fallbacks.
    fallbacks: list[str] | None = None
    # The servers (or keys) that serve this model, balanced by shared.upstream.deployments; none: the one above.
    deployments: list[_DeploymentEntry] = Field(default_factory=list)

    @field_validator("input_per_1k", "output_per_1k")
    @classmethod
    def _exact_price(cls, value: Decimal) -> Decimal:
        if value.as_tuple().exponent < -PRICE_DECIMALS:  # type: ignore[operator]
            raise ValueError(f"at most {PRICE_DECIMALS} decimal places")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _http_url(value)

    @model_validator(mode="after")
    def _unique_deployments(self) -> _ModelEntry:
        names = [d.name for d in self.deployments]
        if len(set(names)) != len(names):
            raise ValueError(f"model {self.name!r}: deployment names must be unique")
        return self


def _http_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/") if value else value


class _Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connect_s: float | None = Field(default=None, gt=0)
    read_s: float | None = Field(default=None, gt=0)


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tiers: list[str] = Field(min_length=1)
    models: list[_ModelEntry] = Field(min_length=1)
    timeouts: dict[str, _Timeouts] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> _CatalogFile:
        if len(set(self.tiers)) != len(self.tiers):
            raise ValueError("tiers must be unique")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("model names must be unique")
        for model in self.models:
            if model.tier not in self.tiers:
                raise ValueError(f"model {model.name!r} names unknown tier {model.tier!r}")
        for tier in self.tiers:
            if not any(m.tier == tier for m in self.models):
                raise ValueError(f"tier {tier!r} has no model")
        for model in self.models:
            for fallback in model.fallbacks or ():
                if fallback not in names or fallback == model.name:
                    raise ValueError(f"model {model.name!r} lists unknown or circular fallback {fallback!r}")
        for tier in self.timeouts:
            if tier not in self.tiers:
                raise ValueError(f"timeouts name unknown tier {tier!r}")
        _check_price_order(self.tiers, self.models)
        return self


def _check_price_order(tiers: list[str], models: list[_ModelEntry]) -> None:
    """Refuse prices that do not rise with the tiers: routing could then cost more than not routing.

    The rule, on input and output prices separately (a blend at any one token mix would let a call of
    another mix cost more): every model of a tier costs at least as much per token as every model of every
    weaker tier, and the strongest tier's first model (the baseline savings are measured against) at least as
    much as any model. Then each call costs at most what the same tokens cost on the baseline.
    """
    for side in ("input_per_1k", "output_per_1k"):
        for index, tier in enumerate(tiers[1:], start=1):
            weaker = [m for m in models if tiers.index(m.tier) < index]
            dearest = max(weaker, key=lambda m: getattr(m, side))
            cheapest = min((m for m in models if m.tier == tier), key=lambda m: getattr(m, side))
            if getattr(cheapest, side) < getattr(dearest, side):
                raise ValueError(
                    f"tier {tier!r} is priced below a weaker tier: {cheapest.name} costs {getattr(cheapest, side)} "
                    f"({side}) but {dearest.name} of tier {dearest.tier!r} costs {getattr(dearest, side)}; a stronger "
                    "tier must cost at least as much per input and per output token, or routing could cost more "
                    "than the strongest tier"
                )
        baseline = next(m for m in models if m.tier == tiers[-1])
        dearest = max(models, key=lambda m: getattr(m, side))
        if getattr(dearest, side) > getattr(baseline, side):
            raise ValueError(
                f"{dearest.name} costs {getattr(dearest, side)} ({side}), more than {baseline.name}, the strongest "
                f"tier's first model ({getattr(baseline, side)}), which savings are measured against"
            )


@dataclass(frozen=True)
class Deployment:
    """One server (or key) serving a model: its key is read from the variable `api_key_env` names."""

    name: str
    base_url: str | None = None
    api_key_env: str | None = None
    weight: Decimal = Decimal(1)
    upstream_model: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One model: its tier, prices per 1K tokens, and optionally its own server or several deployments."""

    name: str
    tier: str
    input_per_1k: Decimal
    output_per_1k: Decimal
    base_url: str | None = None
    api_key_env: str | None = None
    supports_logprobs: bool = True
    context_window: int = DEFAULT_CONTEXT_WINDOW
    fallbacks: tuple[str, ...] = ()
    connect_timeout_s: float | None = None
    read_timeout_s: float | None = None
    # Several servers or keys for this model; empty: the one implicit deployment (base_url and api_key_env above).
    deployments: tuple[Deployment, ...] = ()
    # Set on the spec of one deployment (`on`): the deployment it calls, and the name that server knows it by.
    deployment: str | None = None
    upstream_model: str | None = None

    @property
    def upstream_key(self) -> str:
        """The name its circuit breaker, admission and in-flight count are kept under: one per deployment."""
        return self.name if self.deployment is None else f"{self.name}@{self.deployment}"

    def on(self, deployment: Deployment) -> ModelSpec:
        """Return this model as served by `deployment` (which inherits the server and key variable it omits)."""
        return dataclasses.replace(
            self,
            base_url=deployment.base_url or self.base_url,
            api_key_env=deployment.api_key_env or self.api_key_env,
            deployments=(),
            deployment=deployment.name,
            upstream_model=deployment.upstream_model,
        )

    def served_by(self) -> tuple[ModelSpec, ...]:
        """Return the spec of each deployment, or this spec alone for a model without deployments."""
        return tuple(self.on(d) for d in self.deployments) if self.deployments else (self,)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """Return the exact cost in dollars of a call with these token counts."""
        return (prompt_tokens * self.input_per_1k + completion_tokens * self.output_per_1k) / 1000


@dataclass(frozen=True)
class Catalog:
    """The validated catalog; tiers are ordered from weakest to strongest."""

    tiers: tuple[str, ...]
    models: tuple[ModelSpec, ...]

    def get_model(self, name: str) -> ModelSpec:
        """Return the model named `name`, or raise RoutingError."""
        for model in self.models:
            if model.name == name:
                return model
        raise RoutingError(f"unknown model {name!r}", details={"field": "model", "known": self.model_names})

    def model_for_tier(self, tier: str) -> ModelSpec:
        """Return the model that serves `tier` (the first listed for it)."""
        self.check_tier(tier)
        return next(m for m in self.models if m.tier == tier)

    def check_tier(self, tier: str) -> None:
        """Raise RoutingError unless `tier` is in the catalog."""
        if tier not in self.tiers:
            raise RoutingError(f"unknown tier {tier!r}", details={"field": "tier", "known": list(self.tiers)})

    def tier_above(self, tier: str) -> str | None:
        """Return the next stronger tier, or None for the strongest."""
        self.check_tier(tier)
        index = self.tiers.index(tier)
        return self.tiers[index + 1] if index + 1 < len(self.tiers) else None

    def tiers_from(self, tier: str) -> tuple[str, ...]:
        """Return `tier` and every stronger tier."""
        self.check_tier(tier)
        return self.tiers[self.tiers.index(tier) :]

    def tiers_up_to(self, max_tier: str | None) -> tuple[str, ...]:
        """Return the tiers a job capped at `max_tier` may be answered in: every tier up to it, or all of them."""
        if max_tier is None:
            return self.tiers
        self.check_tier(max_tier)
        return self.tiers[: self.tiers.index(max_tier) + 1]

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def upstream_keys(self) -> list[str]:
        """The circuit (and admission) key of every deployment of every model."""
        return [spec.upstream_key for model in self.models for spec in model.served_by()]

    def chain(self, name: str) -> tuple[ModelSpec, ...]:
        """Return the model and, in order, the fallbacks that take over when it fails."""
        model = self.get_model(name)
        return (model, *(self.get_model(fallback) for fallback in model.fallbacks))

    def only(self, names: Set[str]) -> Catalog:
        """Return the catalog of the models in `names` alone: the tiers none of them serves are gone, and each
        model's fallbacks skip the others. Routing, escalation, fallbacks and the reservation bound all read
        it as they read the whole catalog, so a job narrowed to it never calls another model."""
        models = tuple(
            dataclasses.replace(model, fallbacks=tuple(name for name in model.fallbacks if name in names))
            for model in self.models
            if model.name in names
        )
        served = {model.tier for model in models}
        return Catalog(tiers=tuple(tier for tier in self.tiers if tier in served), models=models)


def load_catalog(path: Path) -> Catalog:
    """Read and validate a catalog file; raise ConfigError naming what is wrong."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"invalid setting MODEL_CATALOG_PATH: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid setting MODEL_CATALOG_PATH: {path} is not valid TOML: {exc}") from None
    try:
        parsed = _CatalogFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid model catalog {path}: {where + ': ' if where else ''}{message}") from None
    models = tuple(_spec(entry, parsed) for entry in parsed.models)
    return Catalog(tiers=tuple(parsed.tiers), models=models)


def _spec(entry: _ModelEntry, catalog: _CatalogFile) -> ModelSpec:
    fields = entry.model_dump(exclude={"fallbacks", "deployments"})
    timeouts = catalog.timeouts.get(entry.tier, _Timeouts())
    return ModelSpec(
        **fields,
        deployments=tuple(Deployment(**d.model_dump()) for d in entry.deployments),
        fallbacks=tuple(_default_fallbacks(entry, catalog) if entry.fallbacks is None else entry.fallbacks),
        connect_timeout_s=timeouts.connect_s,
        read_timeout_s=timeouts.read_s,
    )


def _default_fallbacks(entry: _ModelEntry, catalog: _CatalogFile) -> list[str]:
    """The tier's other models first, then the model that serves the next tier up."""
    same_tier = [m.name for m in catalog.models if m.tier == entry.tier and m.name != entry.name]
    index = catalog.tiers.index(entry.tier)
    above = (
        [next(m.name for m in catalog.models if m.tier == catalog.tiers[index + 1])]
        if index + 1 < len(catalog.tiers)
        else []
    )
    return same_tier + above
