"""deploy/kubernetes/ builds, validates against Kubernetes' schemas offline, and runs what the Procfile runs.

Each kustomization (the base and every overlay) is built with `kubectl kustomize` (kustomize is built into
kubectl, which the project's machines carry) and every built object is checked against the Kubernetes API's
JSON schemas with kubernetes-validate, strictly (an unknown field fails). KEDA's objects have no schema there
and are checked by hand.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.config import Settings

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = sorted(path.parent for path in KUBERNETES.rglob("kustomization.yaml"))
KUBERNETES_VERSION = "1.30.0"
SECRETS = "model-router-secrets"
# Settings that are secrets, or URLs that may carry credentials: never in a ConfigMap or a literal value.
CREDENTIAL_URLS = {"DATABASE_URL", "REDIS_URL", "ALERT_WEBHOOK_URL"}
SECRET_SETTINGS = CREDENTIAL_URLS | {
    name.upper() for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
}
REQUIRED_SECRETS = {"DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "WEBHOOK_SECRET"}
# The Procfile's processes and the Deployment that runs each (the simulator is for local runs only).
PROCESSES = {
    "web": "model-router-web",
    "worker": "model-router-worker-prompts",
    "worker_2": "model-router-worker-prompts",
    "batch_worker": "model-router-worker-batch",
    "beat": "model-router-beat",
}
LOCAL_ONLY_PROCESSES = {"simulator"}
# Options whose values differ on purpose between a laptop and a cluster: the bind address, the number of
# processes or greenlets (sized per pod), the Celery hostname, beat's schedule file.
# gunicorn's control socket (a per-stack file on a host, none in a read-only pod).
DEPLOYMENT_SPECIFIC = {
    "--bind",
    "--workers",
    "--concurrency",
    "--hostname",
    "--schedule",
    "--control-socket",
    "--no-control-socket",
}


def _build(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl (with its built-in kustomize) is needed to build deploy/kubernetes/"
    built = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    return [document for document in yaml.safe_load_all(built.stdout) if document]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=lambda path: str(path.relative_to(KUBERNETES)))
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return _build(request.param)


def _of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {item["metadata"]["name"]: item for item in objects if item["kind"] == kind}


def _workloads(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {**_of_kind(objects, "Deployment"), **_of_kind(objects, "Job")}


def _app_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def test_there_is_a_base_and_an_overlay() -> None:
    assert KUBERNETES / "base" in KUSTOMIZATIONS
    assert any("overlays" in path.parts for path in KUSTOMIZATIONS)


def test_every_object_is_valid_for_kubernetes(objects: list[dict[str, Any]]) -> None:
    for item in objects:
        if item["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)


def test_each_process_of_the_procfile_has_its_deployment(objects: list[dict[str, Any]]) -> None:
    procfile = _procfile()
    assert set(procfile) - LOCAL_ONLY_PROCESSES == set(PROCESSES), "a Procfile process has no Deployment"
    deployments = _of_kind(objects, "Deployment")
    assert set(deployments) == set(PROCESSES.values())
    for process, name in PROCESSES.items():
        expected = _command_shape(procfile[process])
        program, positionals, options = _command_shape(_app_container(deployments[name])["command"])
        assert (program, positionals) == expected[:2], (process, name)
        missing = expected[2] - options
        assert not missing, f"{name} runs without the Procfile's {process} options {sorted(missing)}"


def test_every_workload_has_resources_and_runs_as_non_root_on_a_read_only_root(
    objects: list[dict[str, Any]],
) -> None:
    for name, workload in _workloads(objects).items():
        pod = workload["spec"]["template"]["spec"]
        container = _app_container(workload)
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) >= {"cpu", "memory"}, (name, kind)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert "terminationGracePeriodSeconds" in pod, name
        assert pod["automountServiceAccountToken"] is False, name


def test_every_deployment_has_liveness_and_startup_probes(objects: list[dict[str, Any]]) -> None:
    for name, deployment in _of_kind(objects, "Deployment").items():
        container = _app_container(deployment)
        assert "livenessProbe" in container and "startupProbe" in container, name
        if name != "model-router-web":
            # Workers and beat: the liveness file, which needs no broker.
            assert container["livenessProbe"]["exec"]["command"] == ["python", "-m", "worker.liveness"], name


def test_web_is_live_on_livez_ready_on_readyz_and_scraped(objects: list[dict[str, Any]]) -> None:
    web = _of_kind(objects, "Deployment")["model-router-web"]
    container = _app_container(web)
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    annotations = web["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) in {port["containerPort"] for port in container["ports"]}
    service = _of_kind(objects, "Service")["model-router-web"]
    assert service["spec"]["selector"].items() <= web["spec"]["template"]["metadata"]["labels"].items()


def test_every_secret_comes_from_a_secret_key_ref(objects: list[dict[str, Any]]) -> None:
    config_maps = _of_kind(objects, "ConfigMap")
    for config_map in config_maps.values():
        leaked = SECRET_SETTINGS & set(config_map.get("data", {}))
        assert not leaked, f"secrets in ConfigMap {config_map['metadata']['name']}: {sorted(leaked)}"
    for name, workload in _workloads(objects).items():
        env = {variable["name"]: variable for variable in _app_container(workload).get("env", [])}
        for setting in SECRET_SETTINGS:
            assert setting in env, f"{name} does not read {setting}"
            reference = env[setting].get("valueFrom", {}).get("secretKeyRef")
            assert reference is not None and "value" not in env[setting], f"{name}: {setting} is not a secretKeyRef"
            assert reference["name"] == SECRETS and reference["key"] == setting, (name, setting)
            assert reference.get("optional", False) is (setting not in REQUIRED_SECRETS), (name, setting)


def test_the_config_map_holds_only_known_settings(objects: list[dict[str, Any]]) -> None:
    known = {name.upper() for name in Settings.model_fields}
    for config_map in _of_kind(objects, "ConfigMap").values():
        unknown = set(config_map["data"]) - known
        assert not unknown, f"ConfigMap keys that are no setting: {sorted(unknown)}"
    for workload in _workloads(objects).values():
        (source,) = _app_container(workload)["envFrom"]
        assert source["configMapRef"]["name"] in _of_kind(objects, "ConfigMap")


# What a worker needs after WORKER_SHUTDOWN_GRACE_S to hand back its jobs and exit before it is killed.
HAND_BACK_S = 10


def test_workers_hand_back_their_jobs_before_their_grace_period_ends(objects: list[dict[str, Any]]) -> None:
    settings = {
        key: value
        for config_map in _of_kind(objects, "ConfigMap").values()
        for key, value in config_map["data"].items()
    }
    shutdown_grace_s = float(settings["WORKER_SHUTDOWN_GRACE_S"])
    workers = {name: item for name, item in _of_kind(objects, "Deployment").items() if "worker" in name}
    assert workers
    for name, worker in workers.items():
        grace_s = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert shutdown_grace_s + HAND_BACK_S <= grace_s, name


def test_every_worker_serves_its_own_metrics_and_is_annotated_for_scraping(objects: list[dict[str, Any]]) -> None:
    settings = {
        key: value
        for config_map in _of_kind(objects, "ConfigMap").values()
        for key, value in config_map["data"].items()
    }
    port = int(settings["WORKER_METRICS_PORT"])
    assert port
    workers = {name: item for name, item in _of_kind(objects, "Deployment").items() if "worker" in name}
    for name, worker in workers.items():
        annotations = worker["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (str(port), "/metrics"), name
        assert {"name": "metrics", "containerPort": port} in _app_container(worker)["ports"], name
        # Counters are served by the process itself: no multiprocess directory on a worker pod.
        assert "PROMETHEUS_MULTIPROC_DIR" not in {env["name"] for env in _app_container(worker).get("env", [])}


def test_beat_runs_alone(objects: list[dict[str, Any]]) -> None:
    beat = _of_kind(objects, "Deployment")["model-router-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    assert "model-router-beat" not in {scaled["spec"]["scaleTargetRef"]["name"] for scaled in _scaled_objects(objects)}


def test_every_container_runs_the_one_image(objects: list[dict[str, Any]]) -> None:
    images = {_app_container(workload)["image"] for workload in _workloads(objects).values()}
    assert len(images) == 1, images


def test_the_migrations_job_is_applied_before_a_rollout(objects: list[dict[str, Any]]) -> None:
    job = _of_kind(objects, "Job")["model-router-migrate"]
    assert _app_container(job)["command"] == ["model-router", "db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # `kubectl apply -k … -l model-router/before-rollout=true` applies the Job with the settings it reads.
    before = {item["kind"] for item in objects if item["metadata"].get("labels", {}).get("model-router/before-rollout")}
    assert before == {"Job", "ConfigMap"}


def test_each_worker_scales_on_its_own_queue(objects: list[dict[str, Any]]) -> None:
    deployments = _of_kind(objects, "Deployment")
    authentications = _of_kind(objects, "TriggerAuthentication")
    scaled = {item["spec"]["scaleTargetRef"]["name"]: item for item in _scaled_objects(objects)}
    assert set(scaled) == {"model-router-worker-prompts", "model-router-worker-batch"}
    for target, item in scaled.items():
        (trigger,) = item["spec"]["triggers"]
        assert trigger["type"] == "redis"
        queues = _option(_app_container(deployments[target])["command"], "--queues")
        assert trigger["metadata"]["listName"] == queues, target
        assert int(trigger["metadata"]["listLength"]) > 0
        assert trigger["authenticationRef"]["name"] in authentications
        assert 1 <= item["spec"]["minReplicaCount"] <= item["spec"]["maxReplicaCount"]
    for authentication in authentications.values():
        assert {ref["name"] for ref in authentication["spec"]["secretTargetRef"]} == {SECRETS}


def test_disruption_budgets_select_pods_of_a_deployment(objects: list[dict[str, Any]]) -> None:
    labels = [item["spec"]["template"]["metadata"]["labels"] for item in _of_kind(objects, "Deployment").values()]
    budgets = _of_kind(objects, "PodDisruptionBudget")
    assert budgets
    for name, budget in budgets.items():
        selector = budget["spec"]["selector"]["matchLabels"].items()
        assert any(selector <= pod.items() for pod in labels), name


def _scaled_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in objects if item["kind"] == "ScaledObject"]


def _procfile() -> dict[str, list[str]]:
    processes = {}
    for line in (ROOT / "Procfile").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            tokens = shlex.split(command)
            # `mkdir -p DIR && exec CMD` makes a host's run directory first; a pod has its volume instead.
            if tokens[:2] == ["mkdir", "-p"] and "exec" in tokens:
                tokens = tokens[tokens.index("exec") + 1 :]
            processes[name.strip()] = tokens
    return processes


def _expand_defaults(token: str) -> str:
    """Replace each `${NAME:-default}` with its default: what the Procfile runs with nothing set."""
    while "${" in token:
        start = token.index("${")
        end = token.index("}", start)
        token = token[:start] + token[start + 2 : end].partition(":-")[2] + token[end + 1 :]
    return token


def _command_shape(command: list[str]) -> tuple[str, tuple[str, ...], set[tuple[str, str]]]:
    """Return a command's program, positional arguments and options, `--opt value` read as `--opt=value`."""
    tokens = [_expand_defaults(token) for token in command]
    program, rest = tokens[0], tokens[1:]
    positionals: list[str] = []
    options: set[tuple[str, str]] = set()
    index = 0
    while index < len(rest):
        token = rest[index]
        if not token.startswith("-"):
            positionals.append(token)
        elif "=" in token:
            options.add(tuple(token.split("=", 1)))  # type: ignore[arg-type]
        elif index + 1 < len(rest) and not rest[index + 1].startswith("-") and not _is_subcommand(rest[index + 1]):
            options.add((token, rest[index + 1]))
            index += 1
        else:
            options.add((token, ""))
        index += 1
    return program, tuple(positionals), {option for option in options if option[0] not in DEPLOYMENT_SPECIFIC}


def _is_subcommand(token: str) -> bool:
    return token in {"worker", "beat"} or token.startswith("web.app:")


def _option(command: list[str], name: str) -> str:
    return dict(_command_shape(command)[2])[name]


def test_procfile_commands_are_read_as_options() -> None:
    program, positionals, options = _command_shape(shlex.split("celery -A app worker --pool ${POOL:-gevent} -Q=q --x"))
    assert (program, positionals) == ("celery", ("worker",))
    assert options == {("-A", "app"), ("--pool", "gevent"), ("-Q", "q"), ("--x", "")}


def test_the_secret_settings_are_found_from_settings() -> None:
    assert {"OPENAI_API_KEY", "WEBHOOK_SECRET", "ALERT_WEBHOOK_SECRET", "WEBHOOK_URL_KEYS"} <= SECRET_SETTINGS
