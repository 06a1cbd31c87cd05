"""The OpenAI-compatible simulator served in-process on a loopback port, for tests that need real HTTP."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from shared.devstack.simulator.app import STATE
from shared.devstack.simulator.app import create_sim_app
from shared.devstack.simulator.sim_settings import SimSettings
from shared.routing.catalog import Catalog
from shared.routing.catalog import load_catalog
from tests.support.catalogs import SEED_CATALOG_PATH

START_TIMEOUT_S = 10.0


class SimServer:
    """A simulator served from its own event loop in a background thread.

    It serves the suites' catalog (tests.support.catalogs) unless given another, so its models are the ones the
    router knows (gpt-3.5-turbo, gpt-4, gpt-4-turbo).
    """

    def __init__(self, *, catalog: Catalog | None = None, settings: SimSettings | None = None) -> None:
        self.app = create_sim_app(
            catalog=catalog if catalog is not None else load_catalog(SEED_CATALOG_PATH),
            settings=settings if settings is not None else SimSettings(),
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sim-server", daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def start(self) -> SimServer:
        """Start serving; return self so `SimServer().start()` reads naturally."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=START_TIMEOUT_S)
        return self

    def stop(self) -> None:
        """Stop serving, cancel any request still hanging, and end the loop thread."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=START_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=START_TIMEOUT_S)
        self._loop.close()

    async def _start(self) -> None:
        # A short shutdown timeout: a request hung by a "timeout" fault must not hold up teardown.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of this server, as `openai.OpenAI(base_url=...)` wants it."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def settings(self) -> SimSettings:
        """The settings the simulator currently answers with."""
        return self.app[STATE].settings

    def request(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one raw HTTP request; return status, lower-cased headers and body.

        The simulator's own key, when it requires one, is sent unless `headers` name another.
        """
        sent = {"Content-Type": "application/json"}
        if self.settings.api_key is not None:
            sent["Authorization"] = f"Bearer {self.settings.api_key}"
        sent.update(headers or {})
        payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=START_TIMEOUT_S)
        try:
            connection.request(method, path, body=payload, headers=sent)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request that must answer 200; return its JSON body."""
        status, _, raw = self.request(method, path, body)
        if status != 200:
            raise AssertionError(f"{method} {path} answered {status}: {raw!r}")
        return json.loads(raw)

    def configure(self, **values: Any) -> dict[str, Any]:
        """Change settings through `POST /sim/config` (keys as that route takes them); return the new ones."""
        return self.json("POST", "/sim/config", values)

    def reset(self) -> None:
        """Go back to the starting settings and zero the stats."""
        self.configure(reset=True)
        self.json("POST", "/sim/reset")

    def stats(self) -> dict[str, dict[str, int]]:
        """Return per-model stats: calls, faults, prompt_tokens and completion_tokens."""
        return self.json("GET", "/sim/stats")["models"]

    def calls(self, model: str | None = None) -> int:
        """Return how many chat calls reached the simulator, for one model or in all."""
        stats = self.stats()
        if model is not None:
            return stats[model]["calls"]
        return sum(entry["calls"] for entry in stats.values())


@contextmanager
def running_sim(*, catalog: Catalog | None = None, **settings: Any) -> Iterator[SimServer]:
    """Serve a simulator started with `settings` (SimSettings fields) for the duration of the block.

    Use it from a fixture::

        @pytest.fixture
        def sim() -> Iterator[SimServer]:
            with running_sim() as server:
                yield server
    """
    server = SimServer(catalog=catalog, settings=SimSettings(**settings)).start()
    try:
        yield server
    finally:
        server.stop()
