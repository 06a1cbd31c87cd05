"""JSON answers: exact ledger Decimals leave the service as JSON numbers, as the contract shows them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from flask.json.provider import DefaultJSONProvider


class ApiJSONProvider(DefaultJSONProvider):
    """Flask's provider, with Decimal as a number (Flask's default turns it into a string)."""

    sort_keys = False

    @staticmethod
    def default(o: Any) -> Any:
        if isinstance(o, Decimal):
            return float(o)
        return DefaultJSONProvider.default(o)
