"""bench/guarantees.py runs: its short form of two cheap scenarios prints their lines and writes their figures.

The guarantees themselves are asserted by their own suites; this keeps the bench that shows them runnable on
the code it ships with (a scenario that breaks is ERROR and exits 2, whatever its figure would have been).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# The breaker's needs only a Redis; the callbacks' a whole stack on PostgreSQL (its jobs are never run).
CHEAP = ("breaker_probes_exact", "callbacks_public_only")


def test_quick_form_prints_one_line_per_guarantee_and_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "guarantees.json"
    command = [sys.executable, "-m", "bench.guarantees", "--quick", "--only", ",".join(CHEAP), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)

    assert run.returncode in (0, 1), run.stdout + run.stderr[-4000:]
    lines = [line for line in run.stdout.splitlines() if line.split(" ", 1)[0] in ("PASS", "FAIL", "ERROR")]
    assert [line.split()[1] for line in lines] == list(CHEAP), run.stdout
    report = json.loads(out.read_text())
    assert report["mode"] == "quick"
    results = {result["name"]: result for result in report["results"]}
    assert set(results) == set(CHEAP)
    for name, result in results.items():
        assert result["status"] in ("PASS", "FAIL"), result
        assert result["figure"] and result["rule"], result
        assert f"{result['status']:<5}  {name}" in run.stdout
    # The figures are counts the scenarios measured, not placeholders.
    assert results["breaker_probes_exact"]["details"]["rounds"] == 40
    assert len(results["callbacks_public_only"]["details"]["outcomes"]) >= 20
    control = results["callbacks_public_only"]["details"]["control"]
    assert control[1] == 402, control  # the control passed the callback check and was refused by the budget
