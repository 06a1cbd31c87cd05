"""The catalog the suites run on: the seed's three models (shared/routing/catalogs/seed.toml).

Tests name these models throughout; the default catalog (shared/routing/models.toml) has its own tests.
"""

from __future__ import annotations

from shared.routing.catalog import CATALOGS_DIR

SEED_CATALOG_PATH = CATALOGS_DIR / "seed.toml"
