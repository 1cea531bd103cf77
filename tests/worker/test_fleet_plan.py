"""The fleet plan and ``--dry-run``: exact server and worker commands per GPU for each checkpoint family."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.errors import ConfigError
from schemas.models import get_model
from schemas.settings import Settings
from tests.services.procs import ROOT
from worker.fleet.gpus import discover_gpus, group_gpus, parse_gpu_list
from worker.fleet.launcher import build_plan, size_concurrency
from worker.fleet.supervisor import backoff_s
from worker.serverwatch import ServerHealth

PY = sys.executable
LAUNCH = f"{PY} -m sglang.launch_server"


def plan_for(model: str, gpus: list[str], **settings: object):  # type: ignore[no-untyped-def]
    spec = get_model(model)
    return build_plan(Settings(model=spec.name, **settings), spec, host="node1", gpus=gpus)  # type: ignore[arg-type]


def worker_line(node: str, gpu: str, port: int, metrics: int, model: str, concurrency: int | None = None) -> str:
    fixed = f" --concurrency {concurrency}" if concurrency is not None else ""  # none: sized from the server's queue
    return (
        # a launched server reports untempered logprobs (SERVER_ENV): its worker is told so instead of probing
        f"GUARDQ_GPU={gpu} GUARDQ_METRICS_PORT={metrics} GUARDQ_SGLANG_LOGPROBS=original {PY} -m worker "
        f"--hostname {node}@node1 "
        f"--sglang-url http://127.0.0.1:{port} --model {model}{fixed} --ready-timeout 1800"
    )


@pytest.mark.parametrize(
    ("model", "flags"),
    [
        (
            "AIML-TUDA/LlavaGuard-7B",
            "--model-path AIML-TUDA/LlavaGuard-7B --tokenizer-path llava-hf/llava-1.5-7b-hf --chat-template vicuna_v1.1",
        ),
        (
            "AIML-TUDA/LlavaGuard-13B",
            "--model-path AIML-TUDA/LlavaGuard-13B --tokenizer-path llava-hf/llava-1.5-13b-hf "
            "--chat-template vicuna_v1.1",
        ),
        (
            "AIML-TUDA/LlavaGuard-v1.2-7B-OV",
            "--model-path AIML-TUDA/LlavaGuard-v1.2-7B-OV --chat-template chatml-llava",
        ),
    ],
    ids=["7B", "13B", "7B-OV"],
)
def test_a_single_gpu_model_gets_one_pinned_server_and_one_worker_per_gpu(model: str, flags: str) -> None:
    plan = plan_for(model, ["0", "1"])
    assert ["gpu0@node1", "gpu1@node1"] == [s.node for s in plan.slots]
    for i, slot in enumerate(plan.slots):
        assert slot.server is not None
        assert (
            f"CUDA_VISIBLE_DEVICES={i} SGLANG_RETURN_ORIGINAL_LOGPROB=1 REQUEST_TIMEOUT=120 {LAUNCH} {flags} --host 127.0.0.1 --port {30000 + i} --enable-metrics --enable-cache-report --enable-priority-scheduling --default-priority-value 0"
            == slot.server.shell()
        )
        assert worker_line(f"gpu{i}", str(i), 30000 + i, 9400 + i, model) == slot.worker.shell()


def test_34b_runs_tensor_parallel_on_two_gpus_per_server() -> None:
    plan = plan_for("AIML-TUDA/LlavaGuard-34B", ["0", "1", "2", "3"])
    assert 2 == plan.tp
    assert [("0", "1"), ("2", "3")] == [s.gpus for s in plan.slots]
    flags = (
        "--model-path AIML-TUDA/LlavaGuard-34B --tokenizer-path liuhaotian/llava-v1.6-34b-tokenizer "
        "--chat-template chatml-llava"
    )
    first, second = plan.slots
    assert first.server is not None and second.server is not None
    assert (
        f"CUDA_VISIBLE_DEVICES=0,1 SGLANG_RETURN_ORIGINAL_LOGPROB=1 REQUEST_TIMEOUT=120 {LAUNCH} {flags} --host 127.0.0.1 --port 30000 --tp 2 --enable-metrics --enable-cache-report --enable-priority-scheduling --default-priority-value 0"
        == first.server.shell()
    )
    assert (
        f"CUDA_VISIBLE_DEVICES=2,3 SGLANG_RETURN_ORIGINAL_LOGPROB=1 REQUEST_TIMEOUT=120 {LAUNCH} {flags} --host 127.0.0.1 --port 30001 --tp 2 --enable-metrics --enable-cache-report --enable-priority-scheduling --default-priority-value 0"
        == second.server.shell()
    )
    assert worker_line("gpu2-3", "2,3", 30001, 9401, "AIML-TUDA/LlavaGuard-34B") == second.worker.shell()
    assert ["guardq.llavaguard-34b", "guardq.llavaguard-34b.bulk"] == plan.queues


def test_server_settings_become_launch_flags_and_size_the_worker() -> None:
    plan = plan_for(
        "AIML-TUDA/LlavaGuard-7B",
        ["3"],
        sglang_launch_cmd="python -m tests.sglang_server",
        sglang_base_port=31000,
        sglang_mem_fraction_static=0.8,
        sglang_max_running_requests=48,
        sglang_max_queued_requests=256,
        sglang_extra_args="--enable-mm-global-cache --schedule-policy lpm",
        metrics_port=0,
    )
    (slot,) = plan.slots
    assert slot.server is not None
    assert [
        "python",
        "-m",
        "tests.sglang_server",
        "--model-path",
        "AIML-TUDA/LlavaGuard-7B",
        "--tokenizer-path",
        "llava-hf/llava-1.5-7b-hf",
        "--chat-template",
        "vicuna_v1.1",
        "--host",
        "127.0.0.1",
        "--port",
        "31000",
        "--enable-metrics",
        "--enable-cache-report",
        "--mem-fraction-static",
        "0.8",
        "--max-running-requests",
        "48",
        "--max-queued-requests",
        "256",
        "--enable-mm-global-cache",
        "--schedule-policy",
        "lpm",
    ] == slot.server.argv
    assert {
        "CUDA_VISIBLE_DEVICES": "3",
        "SGLANG_RETURN_ORIGINAL_LOGPROB": "1",
        "REQUEST_TIMEOUT": "120",
    } == slot.server.env

    assert "--concurrency" not in slot.worker.argv  # the worker sizes its in-flight from the server's queue
    assert "0" == slot.worker.env["GUARDQ_METRICS_PORT"]


def test_a_fixed_concurrency_comes_from_the_flag_then_the_variable_else_the_worker_adapts() -> None:
    assert 7 == size_concurrency(Settings(sglang_max_running_requests=100), 7)
    assert 12 == size_concurrency(Settings(worker_concurrency=12, sglang_max_running_requests=100))
    assert size_concurrency(Settings(sglang_max_running_requests=100)) is None
    assert size_concurrency(Settings()) is None


def test_a_tp_override_changes_the_grouping() -> None:
    plan = plan_for("AIML-TUDA/LlavaGuard-34B", ["0", "1"], sglang_tp=1)
    assert [("0",), ("1",)] == [s.gpus for s in plan.slots]
    assert all(s.server is not None and "--tp" not in s.server.argv for s in plan.slots)


def test_attached_servers_get_one_worker_each_and_no_server_command() -> None:
    spec = get_model("AIML-TUDA/LlavaGuard-7B")
    plan = build_plan(Settings(), spec, host="pod-a", urls=["http://10.0.0.5:30000/", "http://10.0.0.6:30000"])
    assert ["sglang0@pod-a", "sglang1@pod-a"] == [s.node for s in plan.slots]
    assert [None, None] == [s.server for s in plan.slots]
    assert ["http://10.0.0.5:30000", "http://10.0.0.6:30000"] == [s.url for s in plan.slots]
    assert "(already running; attached)" in plan.render()


@pytest.mark.parametrize(
    ("spec", "problem"),
    [("", "no GPU given"), ("0,0", "listed twice"), ("0,x", "'x' is not a GPU index")],
)
def test_bad_gpu_lists_are_rejected_with_a_clear_message(spec: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_gpu_list(spec)


def test_gpus_that_do_not_split_into_tp_groups_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"3 GPU\(s\) do not split into servers of tp=2"):
        group_gpus(["0", "1", "2"], 2)


def test_gpus_all_uses_cuda_visible_devices_when_set_else_nvidia_smi(tmp_path: Path) -> None:
    assert ["2", "5"] == discover_gpus(env={"CUDA_VISIBLE_DEVICES": "2,5"})
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n'\n")
    fake.chmod(0o755)
    assert ["0", "1", "2"] == discover_gpus(str(fake), env={})
    with pytest.raises(ConfigError, match="not found"):
        discover_gpus(str(tmp_path / "missing-nvidia-smi"), env={})


def test_restart_backoff_doubles_up_to_its_cap() -> None:
    assert [2.0, 4.0, 8.0, 16.0, 20.0] == [backoff_s(n, 2.0, 20.0) for n in range(1, 6)]


def test_the_server_is_down_after_two_failed_probes_and_up_after_one_good_one() -> None:
    health = ServerHealth(fail_after=2)
    assert [True, False, False, True] == [health.observe(ok) for ok in (False, False, False, True)]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDQ_")}
    return subprocess.run(
        [str(Path(PY).parent / "guardq"), *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def test_guardq_worker_dry_run_prints_every_command_and_its_environment() -> None:
    result = run_cli("worker", "--gpus", "0,1,2,3", "--model", "AIML-TUDA/LlavaGuard-34B", "--dry-run")
    assert 0 == result.returncode, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# guardq fleet: AIML-TUDA/LlavaGuard-34B (chat template chatml-llava, tp 2)")
    servers = [line.strip() for line in lines if line.strip().startswith("server:")]
    workers = [line.strip() for line in lines if line.strip().startswith("worker:")]
    assert 2 == len(servers) == len(workers)
    assert servers[0].startswith(
        f"server: CUDA_VISIBLE_DEVICES=0,1 SGLANG_RETURN_ORIGINAL_LOGPROB=1 REQUEST_TIMEOUT=120 {LAUNCH} --model-path AIML-TUDA/LlavaGuard-34B"
    )
    assert servers[1].startswith(
        f"server: CUDA_VISIBLE_DEVICES=2,3 SGLANG_RETURN_ORIGINAL_LOGPROB=1 REQUEST_TIMEOUT=120 {LAUNCH} --model-path AIML-TUDA/LlavaGuard-34B"
    )
    assert (
        "--port 30001 --tp 2 --enable-metrics --enable-cache-report --enable-priority-scheduling --default-priority-value 0"
        in servers[1]
    )
    assert "GUARDQ_GPU=2,3 GUARDQ_METRICS_PORT=9401" in workers[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "0", "--sglang-url", "http://127.0.0.1:1"], "either --gpus"),
        (["--dry-run"], "--dry-run needs --gpus"),
        (["--gpus", "0,1,2", "--model", "AIML-TUDA/LlavaGuard-34B", "--dry-run"], "do not split"),
        (["--gpus", "0", "--model", "nope/Nope", "--dry-run"], "unknown model"),
    ],
    ids=["gpus-and-urls", "dry-run-alone", "odd-gpus-for-tp2", "unknown-model"],
)
def test_bad_worker_arguments_exit_non_zero_with_one_line(args: list[str], message: str) -> None:
    result = run_cli("worker", *args)
    assert 2 == result.returncode
    assert message in result.stderr
    assert 1 == len(result.stderr.strip().splitlines())


def test_a_server_port_already_taken_stops_the_launch_with_one_line_naming_it() -> None:
    """Before launching anything the launcher checks each server's port: a clash is one clear error, not a
    server crash-looping on 'address in use' (or another process answering its health probes)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        result = run_cli("worker", "--gpus", "0,1", "--base-port", str(taken - 1), "--server-cmd", "false")
    assert 2 == result.returncode
    assert "port(s) " in result.stderr and f"{taken} (gpu1@" in result.stderr
    assert "--base-port" in result.stderr
    assert 1 == len(result.stderr.strip().splitlines())


def test_pre_staged_weights_replace_the_hub_ids_in_the_server_command() -> None:
    settings = Settings(sglang_model_path="/models/llava-rand", sglang_tokenizer_path="/models/llava-rand-tok")
    plan = build_plan(settings, get_model("AIML-TUDA/LlavaGuard-7B"), host="h", gpus=["0"])
    argv = plan.slots[0].server.argv if plan.slots[0].server else []
    assert "/models/llava-rand" == argv[argv.index("--model-path") + 1]
    assert "/models/llava-rand-tok" == argv[argv.index("--tokenizer-path") + 1]
    assert "vicuna_v1.1" == argv[argv.index("--chat-template") + 1]  # still the registry's template


@pytest.mark.parametrize(
    ("extra", "added"),
    [
        ("", True),
        ("--schedule-policy fcfs", True),
        ("--schedule-policy=lof", True),
        ("--schedule-policy lpm", False),  # SGLang 0.5.17 refuses priority scheduling beside lpm
        ("--schedule-policy=dfs-weight", False),
        ("--enable-priority-scheduling --schedule-low-priority-values-first", False),  # the operator's own
    ],
)
def test_launched_servers_admit_by_priority_unless_the_operators_flags_rule_it_out(extra: str, added: bool) -> None:
    from worker.fleet.launcher import priority_scheduling_fits

    assert added == priority_scheduling_fits(shlex.split(extra))


def test_the_servers_image_preprocessing_may_wait_as_long_as_guardq_waits_unless_the_operator_said_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SGLang's REQUEST_TIMEOUT (10 s) failed 28 % of OneVision requests on the H200 with HTTP 500."""
    from worker.fleet.launcher import server_command

    monkeypatch.delenv("REQUEST_TIMEOUT", raising=False)
    spec = get_model("AIML-TUDA/LlavaGuard-v1.2-7B-OV")
    command = server_command(Settings(sglang_timeout_s=300.5), spec, port=30000, gpus=("0",), tp=1)
    assert command.env["REQUEST_TIMEOUT"] == "301"
    monkeypatch.setenv("REQUEST_TIMEOUT", "30")  # the operator's own: inherited by the server, not overridden
    assert "REQUEST_TIMEOUT" not in server_command(Settings(), spec, port=30000, gpus=("0",), tp=1).env
