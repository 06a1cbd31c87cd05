"""Which catalog models a key's jobs may call, and which of its requests are refused.

A key's `allowed_models` binds every model that may answer its jobs, not only the one a request names. Each
job carries the list as it stood when the job was accepted (shared.jobs.lifecycle), and is routed, answered,
escalated and budgeted in the catalog of those models alone (`catalog_for`): a fallback outside the list is
skipped, an escalation goes only to a stronger tier the list serves (or does not happen), and a job whose
allowed models all failed fails with their errors, never calling another one. Its reservation prices only
those models, so a narrowed key reserves less.

At the edge (`check`, 403 ModelNotAllowed before anything is reserved) a request is refused when it forces
what the key may not use, as gateways refuse a key a model it may not call while their routing aliases route
among the key's models:

- a forced `model` outside the list;
- a forced `tier` that no model of the list serves (one that does runs on the list's models of that tier);
- a routed request (neither) only when no model of the list is in the catalog: otherwise it is routed among
  the tiers the list serves, so a key limited to the cheap model has every routed prompt answered by it.
"""

from __future__ import annotations

from collections.abc import Set

from shared.errors import ModelNotAllowed
from shared.routing.catalog import Catalog


def catalog_for(catalog: Catalog, allowed: Set[str] | None) -> Catalog:
    """Return the catalog a job allowed `allowed` (None: any model) is routed, answered and budgeted in."""
    return catalog if allowed is None else catalog.only(allowed)


def check(catalog: Catalog, *, allowed: Set[str] | None, model: str | None, tier: str | None) -> None:
    """Raise ModelNotAllowed when the request forces a model or tier outside `allowed` (None: any), or, routed,
    when nothing in `allowed` is left to route to; RoutingError for an unknown model or tier."""
    if allowed is None:
        return
    if model is not None:
        catalog.get_model(model)
        refused = [] if model in allowed else [model]
    else:
        served = catalog.only(allowed).tiers
        if tier is not None:
            catalog.check_tier(tier)
            refused = [] if tier in served else [m.name for m in catalog.models if m.tier == tier]
        else:
            refused = [] if served else catalog.model_names
    if refused:
        raise ModelNotAllowed(
            f"this API key may use only {', '.join(sorted(allowed))}, and the request asks for "
            f"{', '.join(refused)}: name one of the key's models or their tiers, or let the router choose among them",
            details={"allowed_models": sorted(allowed), "not_allowed": refused},
        )
