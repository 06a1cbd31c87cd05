"""`serve`: settings from the environment, one-line failures, and a clean stop on a signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from shared.devstack.simulator import server


def test_serve_exits_2_with_one_line_on_a_bad_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIM_FAULTS", "429=2")
    with pytest.raises(SystemExit) as exited:
        server.serve(host="127.0.0.1", port=1)
    assert exited.value.code == 2
    assert capsys.readouterr().err == "invalid setting SIM_FAULTS: share of '429' must be between 0 and 1, got '2'\n"


def test_serve_exits_2_on_a_bad_catalog(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: os.PathLike[str]
) -> None:
    monkeypatch.setenv("MODEL_CATALOG_PATH", os.path.join(tmp_path, "missing.toml"))
    with pytest.raises(SystemExit) as exited:
        server.serve(host="127.0.0.1", port=1)
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("invalid setting MODEL_CATALOG_PATH: cannot read")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_answers_then_stops_cleanly_on_a_signal(stop_signal: signal.Signals) -> None:
    port = _free_port()
    code = f"from shared.devstack.simulator import server; server.serve(host='127.0.0.1', port={port})"
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "SIM_SEED": "3"}
    env.pop("MODEL_CATALOG_PATH", None)
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the simulator did not start"
                time.sleep(0.05)
        process.send_signal(stop_signal)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        stderr = process.stderr.read()
        process.stderr.close()
    assert stderr.startswith("simulator serving 3 models on http://127.0.0.1:")
    assert "Traceback" not in stderr
