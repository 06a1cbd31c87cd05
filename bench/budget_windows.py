"""What budget windows cost a job's money path: accept and finish with and without windows, side by side.

In-process, against a temporary PostgreSQL database (the production database; `--db sqlite` for the embedded
one), with the product's default settings and the suites' catalog. For each configuration it accepts a job
through the path the web tier uses (`create_and_commit`, alone) and finishes it through the worker's run with
an upstream that answers at once, `--jobs` times, in rounds that alternate the configurations so that the
machine's noise falls on both alike. Prints the median microseconds per accept and per finish, their ratio to
the windowless configuration, and writes JSON.

    .venv/bin/python -m bench.budget_windows
    .venv/bin/python -m bench.budget_windows --jobs 2000 --db sqlite
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from shared.jobs import lifecycle
from shared.jobs import runs
from shared.routing.catalog import load_catalog
from shared.store import migrate
from shared.store.session import make_engine
from shared.store.session import make_sessionmaker
from tests.conftest import make_test_settings
from tests.support.catalogs import SEED_CATALOG_PATH
from tests.support.databases import temporary_postgres_database
from tests.support.fakes import FakeLLMClient

CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "no windows": {},
    "service day window": {"budget_windows": {"day": "1000000"}},
    "service day + 6h + week": {"budget_windows": {"day": "1000000", "6h": "1000000", "week": "1000000"}},
}


@contextmanager
def _database(kind: str) -> Iterator[str]:
    if kind == "postgres":
        with temporary_postgres_database("model_router_bench") as url:
            yield url
        return
    with tempfile.TemporaryDirectory() as directory:
        yield f"sqlite:///{directory}/bench.db"


def _one(sessions, catalog, settings, client) -> tuple[float, float]:
    deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=client, sleep=lambda _: None)
    request = lifecycle.JobRequest(prompt="What is 2 + 2?", tier="cheap", max_tokens=64)
    started = time.perf_counter()
    with sessions() as session:
        accepted_job = lifecycle.create_and_commit(
            session, alone=True, request=request, catalog=catalog, settings=settings
        )
    job_id = accepted_job.id
    accepted = time.perf_counter()
    runs.run(job_id, deps=deps)
    return (accepted - started) * 1e6, (time.perf_counter() - accepted) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=600, help="jobs per configuration")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--out", type=Path, default=Path("bench/results/budget_windows.json"))
    args = parser.parse_args()
    catalog = load_catalog(SEED_CATALOG_PATH)
    timings: dict[str, dict[str, list[float]]] = {name: {"accept": [], "finish": []} for name in CONFIGURATIONS}
    with _database(args.db) as url:
        base = make_test_settings(url, monthly_budget_limit=Decimal(1_000_000))
        migrate.upgrade(database_url=url)
        engine = make_engine(base)
        sessions = make_sessionmaker(engine)
        client = FakeLLMClient()
        settings = {
            name: make_test_settings(url, monthly_budget_limit=Decimal(1_000_000), **extra)
            for name, extra in CONFIGURATIONS.items()
        }
        for name in CONFIGURATIONS:  # warm up every statement once
            _one(sessions, catalog, settings[name], client)
        per_round = max(1, args.jobs // args.rounds)
        for _ in range(args.rounds):
            for name in CONFIGURATIONS:
                for _ in range(per_round):
                    accept_us, finish_us = _one(sessions, catalog, settings[name], client)
                    timings[name]["accept"].append(accept_us)
                    timings[name]["finish"].append(finish_us)
        engine.dispose()
    baseline = {part: statistics.median(timings["no windows"][part]) for part in ("accept", "finish")}
    results = {}
    print(f"{args.db}, {per_round * args.rounds} jobs per configuration, median microseconds (ratio to no windows)")
    for name, parts in timings.items():
        medians = {part: statistics.median(values) for part, values in parts.items()}
        results[name] = {
            **{f"{part}_median_us": round(value, 1) for part, value in medians.items()},
            **{f"{part}_ratio": round(medians[part] / baseline[part], 3) for part in medians},
        }
        print(
            f"  {name:<26} accept {medians['accept']:8.0f} us ({medians['accept'] / baseline['accept']:.2f}x)"
            f"   finish {medians['finish']:8.0f} us ({medians['finish'] / baseline['finish']:.2f}x)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"db": args.db, "jobs": per_round * args.rounds, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
