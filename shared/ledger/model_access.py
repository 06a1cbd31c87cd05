"""Which catalog models a key's request may ask for.

A key with `allowed_models` is refused (ModelNotAllowed, 403) a request that asks for a model outside that list,
rather than having its routing narrowed: the request is judged at the edge, before anything is reserved. What a
request asks for is its forced model, its forced tier's model, or, routed, every tier's model (routing may pick
any tier). Fallbacks are not judged: they answer only when the asked-for model fails, and judging them would
refuse every request of a key limited to the cheap tier (whose default fallback is the tier above).
"""

from __future__ import annotations

from collections.abc import Set

from shared.errors import ModelNotAllowed
from shared.routing.catalog import Catalog


def asked_for(catalog: Catalog, *, model: str | None, tier: str | None) -> frozenset[str]:
    """Return the models a job forcing `model` or `tier` (or neither: routed) may be routed to."""
    if model is not None:
        return frozenset({catalog.get_model(model).name})
    if tier is not None:
        return frozenset({catalog.model_for_tier(tier).name})
    return frozenset(catalog.model_for_tier(name).name for name in catalog.tiers)


def check(catalog: Catalog, *, allowed: Set[str] | None, model: str | None, tier: str | None) -> None:
    """Raise ModelNotAllowed unless every model the request asks for is in `allowed` (None: any)."""
    if allowed is None:
        return
    outside = sorted(asked_for(catalog, model=model, tier=tier) - allowed)
    if outside:
        raise ModelNotAllowed(
            f"this API key may use only {', '.join(sorted(allowed))}, and the request may be routed to "
            f"{', '.join(outside)}: name one of the key's models in `model`",
            details={"allowed_models": sorted(allowed), "not_allowed": outside},
        )
