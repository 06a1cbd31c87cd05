"""Where one local stack listens and keeps its files, so that two stacks on one host never share either.

Every file a stack writes (the demo's log, beat's schedule, gunicorn's control socket, the metrics directory)
lives in its run directory: RUN_DIR, else `.run/<PORT>` under the working directory (where `.env` and the
SQLite file are read from too). Two stacks on one host listen on two ports, so their default directories
differ. (Under honcho every process has a PORT of its own, so the Procfile's default is `.run/procfile`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared import config
from shared.errors import ConfigError

DEFAULT_PORT = 8000
RUN_DIR_ENV = "RUN_DIR"


def local_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """Return `environ` with PORT and MODEL_ROUTER_URL added from `.env` where it names neither.

    The service's settings read `.env` too, so a stack started with the result serves where the app and the
    CLI expect it.
    """
    read = config.load_local_stack_settings()
    found = {"PORT": read.port, "MODEL_ROUTER_URL": read.model_router_url}
    return {**{name: value for name, value in found.items() if value is not None}, **environ}


def web_port(environ: Mapping[str, str]) -> int:
    """Return the port the stack's web tier serves on: PORT, else 8000."""
    value = environ.get("PORT") or str(DEFAULT_PORT)
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"invalid setting PORT: {value!r} is not a port number")
    return int(value)


def local_url(environ: Mapping[str, str]) -> str:
    """Return the URL a stack started with this environment serves the API on."""
    return f"http://127.0.0.1:{web_port(environ)}"


@dataclass(frozen=True)
class StackPaths:
    """The files of one stack, all under its run directory."""

    root: Path

    @classmethod
    def of(cls, environ: Mapping[str, str]) -> StackPaths:
        """Return the paths of the stack this environment describes (RUN_DIR, else `.run/<PORT>`)."""
        root = environ.get(RUN_DIR_ENV) or Path(".run") / str(web_port(environ))
        return cls(root=Path(root).absolute())

    @property
    def demo_log(self) -> Path:
        """The output of the stack `make demo` starts."""
        return self.root / "demo.log"

    @property
    def beat_schedule(self) -> Path:
        """Celery beat's record of when each periodic task last ran."""
        return self.root / "beat-schedule"

    @property
    def control_socket(self) -> Path:
        """gunicorn's control socket (its default, under $HOME or $XDG_RUNTIME_DIR, is one per user)."""
        return self.root / "gunicorn.ctl"

    @property
    def metrics_dir(self) -> Path:
        """The directory the stack's processes share their metric values through (PROMETHEUS_MULTIPROC_DIR)."""
        return self.root / "metrics"

    def create(self) -> StackPaths:
        """Create the run directory (only its owner may enter it: it holds a control socket); return self."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self
