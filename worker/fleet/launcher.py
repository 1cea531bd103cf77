"""The fleet plan: for each GPU (group) the exact SGLang server command and the worker bound to it.

``guardq worker --gpus 0,1`` launches the plan (``worker.fleet.supervisor``); ``--dry-run`` prints it. Each slot
is one server pinned with ``CUDA_VISIBLE_DEVICES`` on port ``GUARDQ_SGLANG_BASE_PORT + i`` and one Celery worker
(node ``gpu<i>@host``) whose requests go only to that server. ``--sglang-url`` (repeated) makes slots that attach
workers to servers someone else runs (no server command).
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from dataclasses import dataclass, field

from schemas.keys import model_queues
from schemas.models import ModelSpec
from schemas.settings import Settings
from worker.fleet.gpus import group_gpus


@dataclass(frozen=True)
class Command:
    """A process to start: its argv and the environment variables the launcher sets on top of its own."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        """One copy-pasteable line: ``VAR=value ... argv``."""
        assignments = [f"{key}={shlex.quote(value)}" for key, value in self.env.items()]
        return " ".join([*assignments, shlex.join(self.argv)])


@dataclass(frozen=True)
class Slot:
    """One server (or attached URL) and its worker."""

    index: int
    node: str
    url: str
    gpus: tuple[str, ...]
    worker: Command
    server: Command | None
    metrics_port: int


@dataclass(frozen=True)
class FleetPlan:
    model: ModelSpec
    tp: int
    slots: list[Slot]
    queues: list[str]

    def render(self) -> str:
        """The dry-run text: every command and the environment it gets, slot by slot."""
        gpus = [g for slot in self.slots for g in slot.gpus]
        where = f"GPUs {','.join(gpus)}" if gpus else f"{len(self.slots)} running server(s)"
        lines = [
            f"# guardq fleet: {self.model.name} (chat template {self.model.chat_template}, tp {self.tp}) on {where}",
            f"# queues, in consumption order: {', '.join(self.queues)}",
        ]
        for slot in self.slots:
            lines.append("")
            pinned = f"GPU {','.join(slot.gpus)} -> " if slot.gpus else ""
            lines.append(f"[{slot.node}] {pinned}{slot.url}")
            if slot.server is not None:
                lines.append(f"  server: {slot.server.shell()}")
            else:
                lines.append("  server: (already running; attached)")
            lines.append(f"  worker: {slot.worker.shell()}")
        return "\n".join(lines) + "\n"


def size_concurrency(settings: Settings, explicit: int | None = None) -> int | None:
    """A fixed number of jobs in flight per worker (``--concurrency``, else ``GUARDQ_WORKER_CONCURRENCY``), or None:
    each worker then sets it from its server's queue (``worker.inflight``), which also covers
    ``--max-running-requests`` and whatever KV memory allows."""
    if explicit is not None:
        return explicit
    return settings.worker_concurrency


# Set on every server the launcher starts: SGLang then reports untempered logprobs, so unsafe_score is read as
# the model's own P(Unsafe) (workers also detect it themselves: worker.inference.tempering).
SERVER_ENV = {"SGLANG_RETURN_ORIGINAL_LOGPROB": "1"}


def priority_scheduling_fits(extra: list[str]) -> bool:
    """Whether the launcher adds ``--enable-priority-scheduling`` (rationale continuations admitted ahead of new
    verdicts: ``worker.inference.continuation``): not when the operator's flags set it already, nor beside a
    ``--schedule-policy`` other than ``fcfs``/``lof``, which SGLang 0.5.17 refuses to combine with it."""
    if "--enable-priority-scheduling" in extra:
        return False
    for i, word in enumerate(extra):
        policy = word.split("=", 1)[1] if word.startswith("--schedule-policy=") else None
        if word == "--schedule-policy" and i + 1 < len(extra):
            policy = extra[i + 1]
        if policy is not None and policy not in {"fcfs", "lof"}:
            return False
    return True


def server_command(settings: Settings, model: ModelSpec, *, port: int, gpus: tuple[str, ...], tp: int) -> Command:
    """``<launch cmd> --model-path ... --chat-template ... --port P --enable-metrics ...`` pinned to ``gpus``."""
    server_args = model.sglang_server_args(
        port=port,
        host=settings.sglang_host,
        tp=tp,
        model_path=settings.sglang_model_path,
        tokenizer_path=settings.sglang_tokenizer_path,
    )
    argv = [*settings.sglang_launch_words(), *server_args]
    # /metrics for the worker's in-flight control and Prometheus; cached-token counts in every response's usage
    argv += ["--enable-metrics", "--enable-cache-report"]
    extra = shlex.split(settings.sglang_extra_args)
    if settings.sglang_priority and priority_scheduling_fits(extra):
        argv += ["--enable-priority-scheduling", "--default-priority-value", "0"]
    optional = {
        "--mem-fraction-static": settings.sglang_mem_fraction_static,
        "--max-running-requests": settings.sglang_max_running_requests,
        "--max-queued-requests": settings.sglang_max_queued_requests,
    }
    for flag, value in optional.items():
        if value is not None:
            argv += [flag, str(value)]
    argv += extra
    return Command(argv, {"CUDA_VISIBLE_DEVICES": ",".join(gpus), **SERVER_ENV, **preprocess_timeout(settings)})


def preprocess_timeout(settings: Settings) -> dict[str, str]:
    """``REQUEST_TIMEOUT`` for SGLang's image preprocessing: as long as guardq waits for an answer anyway.

    SGLang 0.5.17 preprocesses each image on a CPU process pool and gives up after ``REQUEST_TIMEOUT`` seconds
    (default 10, queue wait included) with HTTP 500; on the H200 OneVision's native tiling made 481 of 1,740
    requests fail that way at 64-256 in flight. Waiting is what guardq wants (its in-flight control keeps that
    wait short); an operator's own ``REQUEST_TIMEOUT`` is kept."""
    if "REQUEST_TIMEOUT" in os.environ:
        return {}
    return {"REQUEST_TIMEOUT": str(math.ceil(settings.sglang_timeout_s))}


def worker_command(
    settings: Settings,
    model: ModelSpec,
    *,
    node: str,
    url: str,
    concurrency: int | None,
    gpus: tuple[str, ...],
    metrics: int,
) -> Command:
    """``python -m worker --hostname gpu0@host --sglang-url URL ...`` with its GPU label and metrics port."""
    argv = [
        sys.executable,
        "-m",
        "worker",
        "--hostname",
        node,
        "--sglang-url",
        url,
        "--model",
        model.name,
        *(["--concurrency", str(concurrency)] if concurrency is not None else []),
        "--ready-timeout",
        f"{settings.sglang_ready_timeout_s:g}",
    ]
    env = {"GUARDQ_METRICS_PORT": str(metrics)}
    if gpus:  # its server was started with SERVER_ENV: untempered logprobs, no need to ask
        env["GUARDQ_SGLANG_LOGPROBS"] = "original"
        env = {"GUARDQ_GPU": ",".join(gpus), **env}
    return Command(argv, env)


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host  # noqa: S104 - a bind address, mapped to loopback


def build_plan(
    settings: Settings,
    model: ModelSpec,
    *,
    host: str,
    gpus: list[str] | None = None,
    urls: list[str] | None = None,
    concurrency: int | None = None,
) -> FleetPlan:
    """The plan for ``--gpus`` (launch servers) or ``--sglang-url`` (attach to running ones)."""
    tp = settings.sglang_tp or model.tp
    per_worker = size_concurrency(settings, concurrency)
    slots: list[Slot] = []
    if gpus:
        for index, group in enumerate(group_gpus(gpus, tp)):
            port = settings.sglang_base_port + index
            url = f"http://{_client_host(settings.sglang_host)}:{port}"
            node = f"gpu{'-'.join(group)}@{host}"
            metrics = settings.metrics_port + index if settings.metrics_port else 0
            slots.append(
                Slot(
                    index=index,
                    node=node,
                    url=url,
                    gpus=group,
                    server=server_command(settings, model, port=port, gpus=group, tp=tp),
                    worker=worker_command(
                        settings, model, node=node, url=url, concurrency=per_worker, gpus=group, metrics=metrics
                    ),
                    metrics_port=metrics,
                )
            )
    for url in urls or []:
        index = len(slots)
        node = f"sglang{index}@{host}"
        metrics = settings.metrics_port + index if settings.metrics_port else 0
        command = worker_command(
            settings, model, node=node, url=url.rstrip("/"), concurrency=per_worker, gpus=(), metrics=metrics
        )
        slots.append(Slot(index, node, url.rstrip("/"), (), command, None, metrics))
    return FleetPlan(model=model, tp=tp, slots=slots, queues=model_queues(model))
