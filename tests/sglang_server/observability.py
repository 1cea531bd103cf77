"""What the test server reports about itself, in the shapes of SGLang 0.5.17's ``/model_info``, ``/server_info``,
``/v1/loads`` and ``/metrics`` (recorded from a real server: ``tests/fixtures/sglang-0.5.17/``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.sglang_server.server import SimulatedSGLang

VERSION = "0.5.17"


def model_info(model_path: str) -> dict[str, Any]:
    return {
        "model_path": model_path,
        "tokenizer_path": model_path,
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": "default",
        "has_image_understanding": True,
        "has_audio_understanding": False,
        "model_type": "llava",
        "architectures": ["LlavaLlamaForCausalLM"],
        "guardq_simulated": True,
    }


def _capacity(sim: SimulatedSGLang) -> tuple[int, int]:
    b = sim.behaviour
    return (b.max_running or 4096), b.max_total_tokens  # 4096: SGLang's cap when --max-running-requests is unset


def _core(sim: SimulatedSGLang) -> dict[str, Any]:
    max_running, max_tokens = _capacity(sim)
    with sim.lock:
        running, waiting, used = sim.running, sim.waiting, sim.tokens_in_use
    return {
        "timestamp": time.time(),
        "dp_rank": 0,
        "num_running_reqs": running,
        "num_waiting_reqs": waiting,
        "num_waiting_uncached_tokens": 0,
        "num_used_tokens": used,
        "num_total_tokens": used,
        "num_active_tokens": used,
        "max_total_num_tokens": max_tokens,
        "max_running_requests": max_running,
        "token_usage": round(used / max_tokens, 4),
        "gen_throughput": 0.0,
        "cache_hit_rate": 0.0,
        "utilization": round(min(1.0, running / max_running), 4),
    }


def server_info(sim: SimulatedSGLang) -> dict[str, Any]:
    b = sim.behaviour
    max_running, max_tokens = _capacity(sim)
    return {
        "model_path": b.model_path,
        "tokenizer_path": b.model_path,
        "max_running_requests": b.max_running,  # the server argument: null unless --max-running-requests
        "max_queued_requests": None,
        "chunked_prefill_size": -1,  # SGLang turns chunked prefill off for LLaVA by itself
        "enable_metrics": True,
        "max_total_num_tokens": max_tokens,
        "internal_states": [{"max_running_requests": max_running, "last_gen_throughput": 0.0}],
        "version": VERSION,
        "guardq_simulated": True,
    }


def loads(sim: SimulatedSGLang) -> dict[str, Any]:
    return {
        "timestamp": datetime.now(UTC).isoformat(),
        "version": VERSION,
        "accelerator": "simulated",
        "num_accelerators": 1,
        "loads": [_core(sim)],
    }


def metrics(sim: SimulatedSGLang) -> str:
    """Prometheus text with the labels a real server puts on every sample."""
    core = _core(sim)
    labels = f'engine_type="unified",model_name="{sim.behaviour.model_path}",moe_ep_rank="0",pp_rank="0",tp_rank="0"'
    with sim.lock:
        total = len(sim.requests)
    lines = []
    for name, value in (
        ("num_running_reqs", float(core["num_running_reqs"])),
        ("num_queue_reqs", float(core["num_waiting_reqs"])),
        ("num_used_tokens", float(core["num_used_tokens"])),
        ("token_usage", float(core["token_usage"])),
        ("gen_throughput", 0.0),
        ("cache_hit_rate", 0.0),
    ):
        lines += [f"# HELP sglang:{name} {name}", f"# TYPE sglang:{name} gauge", f"sglang:{name}{{{labels}}} {value}"]
    lines += [
        "# HELP sglang:num_requests_total requests",
        "# TYPE sglang:num_requests_total counter",
        f"sglang:num_requests_total{{{labels}}} {float(total)}",
    ]
    return "\n".join(lines) + "\n"
