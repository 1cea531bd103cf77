"""Deployment files parsed and checked: health checks everywhere, pinned images, GPU reservations, probes, KEDA on
the model queues, PodDisruptionBudgets, secrets, and metric names the worker really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from schemas.keys import model_queues
from schemas.models import get_model
from tests.services.procs import ROOT
from worker.metrics import WorkerMetrics
from worker.streamwatch import STATE_METRIC_NAMES

REDIS_STATE_METRICS = set(STATE_METRIC_NAMES)  # read from Redis at scrape time (worker/streamwatch.py)
INFRA = ROOT / "infra"
COMPOSE = INFRA / "compose" / "docker-compose.yml"


def pinned(image: str) -> bool:
    """``name:tag`` with a real tag (or a digest), never ``latest``."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in {"", "latest"}


def subsequence(needle: list[str], haystack: list[str]) -> bool:
    return any(haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


def server_args(model: str) -> list[str]:
    return get_model(model).sglang_server_args(port=30000, host="0.0.0.0")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def kind(docs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == name]


# --- docker compose ---------------------------------------------------------------------------------------------
def test_every_compose_service_has_a_health_check_and_a_pinned_image(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "api", "flower", "prometheus"} <= set(services)
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert pinned(service["image"]), f"{name} image {service['image']} is not pinned"


def test_each_sglang_service_reserves_its_own_gpu_and_launches_the_registry_flags(compose: dict[str, Any]) -> None:
    sglang = {n: s for n, s in compose["services"].items() if n.startswith("sglang-")}
    assert len(sglang) >= 2
    seen: list[str] = []
    for name, service in sglang.items():
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert ("nvidia", ["gpu"]) == (device["driver"], device["capabilities"])
        seen += device["device_ids"]
        assert subsequence(server_args("AIML-TUDA/LlavaGuard-7B"), service["command"]), name
        assert "--enable-metrics" in service["command"]
        assert "/ready" in " ".join(service["healthcheck"]["test"])
        assert "HF_TOKEN_PATH" in service["environment"] and ["hf_token"] == service["secrets"]
    assert len(seen) == len(set(seen))  # one server per GPU
    assert "HF_TOKEN" == compose["secrets"]["hf_token"]["environment"]


def test_each_worker_waits_for_its_own_healthy_server_and_drains_on_stop(compose: dict[str, Any]) -> None:
    workers = {n: s for n, s in compose["services"].items() if n.startswith("worker-")}
    assert len(workers) >= 2
    for name, worker in workers.items():
        server = "sglang-" + name.removeprefix("worker-")
        command = worker["command"]
        assert f"http://{server}:30000" == command[command.index("--sglang-url") + 1]
        assert "service_healthy" == worker["depends_on"][server]["condition"]
        assert "service_healthy" == worker["depends_on"]["redis"]["condition"]
        assert worker["stop_grace_period"]
        assert "0.0.0.0" == worker["environment"]["GUARDQ_METRICS_HOST"]


def test_compose_redis_keeps_an_append_only_file_and_never_evicts(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert subsequence(["--appendonly", "yes"], command)
    assert subsequence(["--maxmemory-policy", "noeviction"], command)
    assert "--maxmemory" in command  # a full broker refuses writes (workers pause) instead of being OOM-killed


def test_the_verdict_cache_has_its_own_evicting_redis_in_compose_and_kubernetes(
    compose: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    cache = compose["services"]["redis-cache"]["command"]
    assert subsequence(["--maxmemory-policy", "allkeys-lru"], cache) and "--maxmemory" in cache
    assert "redis-cache" in compose["x-guardq-env"]["GUARDQ_CACHE_REDIS_URL"]
    [deployment] = [d for d in kind(k8s, "StatefulSet") if d["metadata"]["name"] == "redis-cache"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert subsequence(["--maxmemory-policy", "allkeys-lru"], args)
    [config] = kind(k8s, "ConfigMap")
    assert "redis-cache" in config["data"]["GUARDQ_CACHE_REDIS_URL"]


def test_prometheus_alerts_cover_redis_memory_stream_trimming_and_unhealthy_workers() -> None:
    rules = yaml.safe_load((INFRA / "prometheus" / "alerts.yml").read_text())
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    for metric in ("guardq_redis_used_memory_bytes", "guardq_stream_group_behind_trim", "guardq_worker_healthy"):
        assert metric in exprs
    used = set(re.findall(r"\bguardq_[a-z_]+", exprs))
    assert used <= exported_metric_names(), used - exported_metric_names()


def test_prometheus_scrapes_every_compose_worker_and_server(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: {t for sc in job["static_configs"] for t in sc["targets"]} for job in config["scrape_configs"]
    }
    services = compose["services"]
    assert {f"{n}:9400" for n in services if n.startswith("worker-")} == targets["guardq-worker"]
    assert {f"{n}:30000" for n in services if n.startswith("sglang-")} == targets["sglang"]


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode != 0,
    reason="no docker compose client on this machine",
)
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        env={"HF_TOKEN": "x", "PATH": "/usr/local/bin:/usr/bin:/bin"},
    )
    assert 0 == result.returncode, result.stderr


def test_the_image_is_slim_pinned_non_root_and_has_no_sglang() -> None:
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert bases and all(pinned(b) and "slim" in b for b in bases)
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    [user] = re.findall(r"^USER\s+(\S+)", final_stage, flags=re.MULTILINE)
    assert user.split(":")[0] not in {"0", "root"}
    assert "sglang" not in " ".join(re.findall(r"pip install.*", dockerfile))


# --- Kubernetes ---------------------------------------------------------------------------------------------------
def pod_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    return [*sidecars, *spec["containers"]]


def test_every_kubernetes_container_has_probes_and_a_pinned_image(k8s: list[dict[str, Any]]) -> None:
    workloads = kind(k8s, "Deployment") + kind(k8s, "StatefulSet")
    assert len(workloads) >= 4
    for workload in workloads:
        for container in pod_containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert container.get("readinessProbe") and container.get("livenessProbe"), where
            assert pinned(container["image"]), where


def test_gpu_pods_run_sglang_as_a_sidecar_with_ready_and_health_probes_and_the_hf_token_secret(
    k8s: list[dict[str, Any]],
) -> None:
    secrets = {s["metadata"]["name"]: s for s in kind(k8s, "Secret")}
    gpu = [
        d
        for d in kind(k8s, "Deployment")
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "guardq-gpu"
    ]
    assert {"AIML-TUDA/LlavaGuard-7B", "AIML-TUDA/LlavaGuard-34B"} == {
        next(e["value"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "GUARDQ_MODEL")
        for d in gpu
    }
    for deployment in gpu:
        spec = deployment["spec"]["template"]["spec"]
        [sglang] = spec["initContainers"]
        [worker] = spec["containers"]
        model = next(e["value"] for e in worker["env"] if e["name"] == "GUARDQ_MODEL")
        assert "Always" == sglang["restartPolicy"]
        assert get_model(model).tp == sglang["resources"]["limits"]["nvidia.com/gpu"]
        assert subsequence(server_args(model), sglang["args"])
        assert ("/ready", "/health", "/health") == (
            sglang["readinessProbe"]["httpGet"]["path"],
            sglang["livenessProbe"]["httpGet"]["path"],
            sglang["startupProbe"]["httpGet"]["path"],
        )
        [token] = [e for e in sglang["env"] if e["name"] == "HF_TOKEN"]
        ref = token["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"]
        port = sglang["ports"][0]["containerPort"]
        assert f"http://127.0.0.1:{port}" == worker["args"][worker["args"].index("--sglang-url") + 1]
        assert "nvidia.com/gpu" not in worker.get("resources", {}).get("limits", {})
        assert spec["terminationGracePeriodSeconds"] >= 600


def test_keda_scales_each_gpu_deployment_on_its_models_queues(k8s: list[dict[str, Any]]) -> None:
    deployments = {d["metadata"]["name"]: d for d in kind(k8s, "Deployment")}
    scaled = kind(k8s, "ScaledObject")
    assert len(scaled) == 2
    for obj in scaled:
        target = deployments[obj["spec"]["scaleTargetRef"]["name"]]
        worker = target["spec"]["template"]["spec"]["containers"][0]
        model = next(e["value"] for e in worker["env"] if e["name"] == "GUARDQ_MODEL")
        lists = [t["metadata"]["listName"] for t in obj["spec"]["triggers"] if t["type"] == "redis"]
        assert model_queues(get_model(model)) == lists
        assert obj["spec"]["minReplicaCount"] >= 1


def test_disruption_budgets_cover_the_gpu_deployments_and_the_api(k8s: list[dict[str, Any]]) -> None:
    templates = [d["spec"]["template"]["metadata"]["labels"] for d in kind(k8s, "Deployment")]
    budgets = kind(k8s, "PodDisruptionBudget")
    covered = 0
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        matching = [labels for labels in templates if selector.items() <= labels.items()]
        assert len(matching) == 1, budget["metadata"]["name"]
        covered += 1
    assert covered == len(templates)


def test_kubernetes_redis_keeps_an_append_only_file_and_never_evicts(k8s: list[dict[str, Any]]) -> None:
    [redis] = [s for s in kind(k8s, "StatefulSet") if s["metadata"]["name"] == "redis"]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert subsequence(["--appendonly", "yes"], args) and subsequence(["--maxmemory-policy", "noeviction"], args)
    assert "--maxmemory" in args


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((INFRA / "k8s" / "kustomization.yaml").read_text())["resources"]
    present = sorted(p.name for p in (INFRA / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")
    assert present == sorted(listed)


def test_prometheus_on_kubernetes_keeps_the_named_metric_ports(k8s: list[dict[str, Any]]) -> None:
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus-k8s.yml").read_text())
    [keep] = [r for r in config["scrape_configs"][0]["relabel_configs"] if r.get("action") == "keep"]
    port_names = {
        p["name"] for d in kind(k8s, "Deployment") for c in pod_containers(d) for p in c.get("ports", []) if "name" in p
    }
    assert set(keep["regex"].split("|")) <= port_names


# --- Grafana ------------------------------------------------------------------------------------------------------
def exported_metric_names() -> set[str]:
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    names = {"guardq_queue_depth"} | REDIS_STATE_METRICS
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def test_the_grafana_dashboard_only_queries_metrics_the_worker_exports() -> None:
    dashboard = json.loads((INFRA / "grafana" / "guardq-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bguardq_[a-z_]+", e)}
    exported = exported_metric_names()
    assert used <= exported, used - exported
    wanted = {
        "guardq_jobs_total",
        "guardq_stage_duration_seconds_bucket",
        "guardq_jobs_in_flight",
        "guardq_job_retries_total",
        "guardq_cache_lookups_total",
        "guardq_queue_depth",
    }
    assert wanted <= used
