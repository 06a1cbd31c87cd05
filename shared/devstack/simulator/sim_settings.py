"""The simulator's settings: read from `SIM_*` variables, overlaid per request or replaced at run time."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace

FAULT_KINDS: tuple[str, ...] = ("429", "500", "502", "503", "timeout", "hedge")
ENV_PREFIX = "SIM_"
# A sum of shares written with decimals (0.7 + 0.2 + 0.1) may land a hair above 1.
_SHARE_SLACK = 1e-9
_NONE_WORDS = frozenset({"", "none", "null", "off"})


@dataclass(frozen=True)
class SimSettings:
    """How the simulator behaves: latency, injected faults, determinism and auth."""

    latency_ms: float = 0.0
    ttft_ms: float = 0.0
    # A streamed answer stops this long after its first token, then goes on (a model that pauses to think).
    pause_ms: float = 0.0
    faults: dict[str, float] = field(default_factory=dict)
    retry_after_s: float | None = 1.0
    down: frozenset[str] = frozenset()
    seed: int = 0
    fail_first: tuple[str, int] | None = None
    timeout_hang_s: float = 60.0
    api_key: str | None = None
    # Requests and tokens admitted per minute per model (None: unlimited), enforced like OpenAI (limits.py).
    rpm: int | None = None
    tpm: int | None = None


def _is_none(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)


def _parse_float(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"must be a number, got {value!r}") from None
    else:
        raise ValueError(f"must be a number, got {value!r}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"must be a finite number >= 0, got {value!r}")
    return number


def _parse_optional_float(value: object) -> float | None:
    return None if _is_none(value) else _parse_float(value)


def _parse_int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"must be an integer, got {value!r}")


def _parse_limit(value: object) -> int | None:
    if _is_none(value):
        return None
    number = _parse_int(value)
    if number <= 0:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return number


def _parse_kind(value: object) -> str:
    kind = str(value).strip().lower()
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {value!r} (known: {', '.join(FAULT_KINDS)})")
    return kind


def _parse_faults(value: object) -> dict[str, float]:
    if _is_none(value):
        return {}
    if isinstance(value, Mapping):
        pairs = [(str(kind), share) for kind, share in value.items()]
    elif isinstance(value, str):
        pairs = []
        for item in value.split(","):
            if not item.strip():
                continue
            kind, sep, share = item.partition("=")
            if not sep:
                raise ValueError(f"expected kind=share pairs separated by commas, got {item.strip()!r}")
            pairs.append((kind, share))
    else:
        raise ValueError(f"expected kind=share pairs separated by commas, got {value!r}")
    faults: dict[str, float] = {}
    for raw_kind, raw_share in pairs:
        kind = _parse_kind(raw_kind)
        if kind in faults:
            raise ValueError(f"fault kind {kind!r} given twice")
        share = _parse_float(raw_share)
        if share > 1:
            raise ValueError(f"share of {kind!r} must be between 0 and 1, got {raw_share!r}")
        faults[kind] = share
    if sum(faults.values()) > 1 + _SHARE_SLACK:
        raise ValueError(f"shares must sum to at most 1, got {sum(faults.values()):g}")
    return faults


def _parse_down(value: object) -> frozenset[str]:
    if _is_none(value):
        return frozenset()
    if isinstance(value, str):
        names = value.split(",")
    elif isinstance(value, list | tuple | set | frozenset) and all(isinstance(n, str) for n in value):
        names = list(value)
    else:
        raise ValueError(f"expected comma-separated model names, got {value!r}")
    return frozenset(name.strip() for name in names if name.strip())


def _parse_fail_first(value: object) -> tuple[str, int] | None:
    if _is_none(value):
        return None
    if isinstance(value, str):
        kind, sep, count = value.partition(":")
        if not sep:
            raise ValueError(f"expected kind:count such as '429:2', got {value!r}")
    elif isinstance(value, list | tuple) and len(value) == 2:
        kind, count = value
    else:
        raise ValueError(f"expected kind:count such as '429:2', got {value!r}")
    parsed_count = _parse_int(count)
    if parsed_count < 0:
        raise ValueError(f"count must be >= 0, got {count!r}")
    return (_parse_kind(kind), parsed_count) if parsed_count else None


def _parse_api_key(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


_PARSERS: dict[str, Callable[[object], object]] = {
    "latency_ms": _parse_float,
    "ttft_ms": _parse_float,
    "pause_ms": _parse_float,
    "faults": _parse_faults,
    "retry_after_s": _parse_optional_float,
    "down": _parse_down,
    "seed": _parse_int,
    "fail_first": _parse_fail_first,
    "timeout_hang_s": _parse_float,
    "api_key": _parse_api_key,
    "rpm": _parse_limit,
    "tpm": _parse_limit,
}
SETTING_KEYS: tuple[str, ...] = tuple(_PARSERS)
# A request must not be able to switch authentication off for itself.
HEADER_KEYS: tuple[str, ...] = tuple(key for key in SETTING_KEYS if key != "api_key")


def normalize_key(raw: str) -> str:
    """Return the setting name for `raw`, accepting `latency_ms`, `SIM_LATENCY_MS` and any case."""
    key = raw.strip().lower()
    return key.removeprefix(ENV_PREFIX.lower())


def _apply(settings: SimSettings, values: Mapping[str, object], *, allowed: tuple[str, ...]) -> SimSettings:
    changes: dict[str, object] = {}
    for raw_key, raw_value in values.items():
        key = normalize_key(raw_key)
        if key not in allowed:
            raise ValueError(f"unknown key {raw_key!r} (known: {', '.join(allowed)})")
        try:
            changes[key] = _PARSERS[key](raw_value)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return replace(settings, **changes) if changes else settings  # type: ignore[arg-type]


def from_env(environ: Mapping[str, str] | None = None) -> SimSettings:
    """Build settings from `SIM_*` variables; raise ValueError naming the first bad one."""
    environ = os.environ if environ is None else environ
    settings = SimSettings()
    for key in SETTING_KEYS:
        name = ENV_PREFIX + key.upper()
        if name in environ:
            try:
                settings = _apply(settings, {key: environ[name]}, allowed=SETTING_KEYS)
            except ValueError as exc:
                detail = str(exc).removeprefix(f"{key}: ")
                raise ValueError(f"invalid setting {name}: {detail}") from None
    return settings


def overlay_header(settings: SimSettings, header: str) -> SimSettings:
    """Return `settings` overlaid with an `X-Sim: key=value;key=value` header; raise ValueError if bad."""
    values: dict[str, str] = {}
    for item in header.split(";"):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"invalid X-Sim header: expected key=value, got {item.strip()!r}")
        values[key] = value.strip()
    try:
        return _apply(settings, values, allowed=HEADER_KEYS)
    except ValueError as exc:
        raise ValueError(f"invalid X-Sim header: {exc}") from None


def apply_config(settings: SimSettings, values: Mapping[str, object]) -> SimSettings:
    """Return `settings` with the keys of a `/sim/config` body replaced; raise ValueError if bad."""
    return _apply(settings, values, allowed=SETTING_KEYS)


def describe(settings: SimSettings) -> dict[str, object]:
    """Return the settings as JSON-ready values, in the syntax the parsers accept (the key is never shown)."""
    fail_first = settings.fail_first
    return {
        "latency_ms": settings.latency_ms,
        "ttft_ms": settings.ttft_ms,
        "pause_ms": settings.pause_ms,
        "faults": dict(settings.faults),
        "retry_after_s": settings.retry_after_s,
        "down": sorted(settings.down),
        "seed": settings.seed,
        "fail_first": f"{fail_first[0]}:{fail_first[1]}" if fail_first else None,
        "timeout_hang_s": settings.timeout_hang_s,
        "api_key_set": settings.api_key is not None,
        "rpm": settings.rpm,
        "tpm": settings.tpm,
    }
