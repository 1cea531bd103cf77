"""Fixtures for the local transformers backend: a tiny random LLaVA checkpoint built once per session, offline."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.models import get_model
from schemas.settings import Settings, load_settings
from schemas.taxonomy import CATEGORY_NAMES
from tests.conftest import image_bytes
from tests.worker.local.tiny_models import build_tiny_llava
from worker.image import PreparedImage, prepare_image
from worker.inference.local import TransformersBackend

# The tiny checkpoint is LLaVA-1.5 shaped, like LlavaGuard v1.1's -hf releases; it is served under that name.
TINY_MODEL = "AIML-TUDA/LlavaGuard-v1.1-7B-hf"
# A byte-level token can carry a single byte, so the longest verdict the grammar admits costs at most its UTF-8
# length in tokens: the longest skeleton plus 4 bytes per rationale character, plus the end token.
RATIONALE_MAX_CHARS = 32
_LONGEST_SKELETON = json.dumps(
    {"rating": "Unsafe", "category": max(CATEGORY_NAMES, key=len), "rationale": ""}, indent=4
)
MAX_NEW_TOKENS = len(_LONGEST_SKELETON.encode()) + 4 * RATIONALE_MAX_CHARS + 1


def tiny_env(model_dir: Path) -> dict[str, str]:
    """``GUARDQ_*`` variables that run the local backend on the tiny checkpoint on CPU."""
    return {
        "GUARDQ_BACKEND": "transformers",
        "GUARDQ_MODEL": TINY_MODEL,
        "GUARDQ_LOCAL_MODEL_PATH": str(model_dir),
        "GUARDQ_LOCAL_DEVICE": "cpu",
        "GUARDQ_MAX_NEW_TOKENS": str(MAX_NEW_TOKENS),
        "GUARDQ_RATIONALE_MAX_CHARS": str(RATIONALE_MAX_CHARS),
    }


def tiny_settings(model_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {k.removeprefix("GUARDQ_").lower(): v for k, v in tiny_env(model_dir).items()}
    return load_settings(**(values | overrides))


def wait_ready(backend: TransformersBackend, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not backend.ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"local model not loaded after {timeout_s}s")
        time.sleep(0.05)


def prepared(color: tuple[int, int, int] = (40, 120, 200), size: tuple[int, int] = (64, 48)) -> PreparedImage:
    return prepare_image(image_bytes(color, size), max_side=336, max_pixels=10_000_000, jpeg_quality=90)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava") / "checkpoint")


@pytest.fixture(scope="session")
def tiny_backend(tiny_llava_dir: Path) -> Iterator[TransformersBackend]:
    """The real backend on the tiny checkpoint (CPU), loaded once and shared by the unit tests."""
    backend = TransformersBackend(tiny_settings(tiny_llava_dir), get_model(TINY_MODEL))
    wait_ready(backend)
    yield backend
    backend.close()
