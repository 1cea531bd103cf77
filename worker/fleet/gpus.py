"""Which GPUs the launcher uses: ``--gpus 0,1,...`` as given, ``--gpus all`` discovered, grouped by tensor parallelism.

``all`` means the GPUs this process may see: the entries of ``CUDA_VISIBLE_DEVICES`` when it is set (a container
runtime or a scheduler already chose them), otherwise every GPU ``nvidia-smi`` lists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from schemas.errors import ConfigError

_GPU_ID = re.compile(r"^(\d+|(GPU|MIG)-[A-Za-z0-9-]+)$")


def discover_gpus(nvidia_smi: str = "nvidia-smi", env: dict[str, str] | None = None) -> list[str]:
    """GPU indices visible to this process (``CUDA_VISIBLE_DEVICES`` first, then ``nvidia-smi``)."""
    environ = os.environ if env is None else env
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() not in {"", "all"}:
        return parse_gpu_list(visible)
    binary = shutil.which(nvidia_smi)
    if binary is None:
        raise ConfigError(f"--gpus all: {nvidia_smi} not found; list the GPUs instead, e.g. --gpus 0,1")
    try:
        out = subprocess.run(
            [binary, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        raise ConfigError(f"--gpus all: {nvidia_smi} failed: {exc}") from None
    gpus = [line.strip() for line in out.splitlines() if line.strip()]
    if not gpus:
        raise ConfigError(f"--gpus all: {nvidia_smi} lists no GPU")
    return parse_gpu_list(",".join(gpus))


def parse_gpu_list(spec: str) -> list[str]:
    """``0,1,3`` (or GPU/MIG UUIDs) → ``["0", "1", "3"]``; duplicates and junk are errors."""
    gpus = [part.strip() for part in spec.split(",") if part.strip()]
    if not gpus:
        raise ConfigError("--gpus: no GPU given (use e.g. --gpus 0,1 or --gpus all)")
    bad = [g for g in gpus if not _GPU_ID.match(g)]
    if bad:
        raise ConfigError(f"--gpus: {bad[0]!r} is not a GPU index or UUID")
    if len(set(gpus)) != len(gpus):
        raise ConfigError(f"--gpus: GPU listed twice in {spec!r}")
    return gpus


def select_gpus(spec: str, nvidia_smi: str = "nvidia-smi") -> list[str]:
    """Resolve a ``--gpus`` value."""
    return discover_gpus(nvidia_smi) if spec.strip().lower() == "all" else parse_gpu_list(spec)


def group_gpus(gpus: list[str], tp: int) -> list[tuple[str, ...]]:
    """Consecutive groups of ``tp`` GPUs, one SGLang server each."""
    if len(gpus) % tp:
        raise ConfigError(f"--gpus: {len(gpus)} GPU(s) do not split into servers of tp={tp} GPUs each")
    return [tuple(gpus[i : i + tp]) for i in range(0, len(gpus), tp)]
