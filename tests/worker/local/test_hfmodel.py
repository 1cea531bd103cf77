"""Choosing what to load: checkpoint path, device, model class; and the worker refusing a checkpoint it can't use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaOnevisionConfig,
    Qwen2Config,
    SiglipVisionConfig,
)

from schemas.errors import ConfigError
from schemas.models import get_model
from schemas.settings import load_settings
from tests.services.procs import ROOT
from worker.inference.hfmodel import checkpoint_path, model_class_for, select_device


def test_the_checkpoint_is_the_models_hf_release_unless_a_local_path_is_given() -> None:
    ov = get_model("AIML-TUDA/LlavaGuard-v1.2-7B-OV")
    assert "AIML-TUDA/LlavaGuard-v1.2-7B-OV-hf" == checkpoint_path(load_settings(), ov)
    assert "/models/lg" == checkpoint_path(load_settings(local_model_path="/models/lg"), ov)


def test_a_model_without_an_hf_release_needs_a_local_path() -> None:
    with pytest.raises(ConfigError, match="GUARDQ_LOCAL_MODEL_PATH"):
        checkpoint_path(load_settings(), get_model("AIML-TUDA/LlavaGuard-34B"))


def test_the_cpu_can_always_be_chosen_and_auto_follows_cuda_availability() -> None:
    assert torch.device("cpu") == select_device("cpu")
    assert ("cuda" if torch.cuda.is_available() else "cpu") == select_device("auto").type


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="GUARDQ_LOCAL_DEVICE=cuda"):
        select_device("cuda")


def test_a_bad_device_value_fails_at_start_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="GUARDQ_LOCAL_DEVICE"):
        load_settings(local_device="gpu0")


def test_llava_checkpoints_load_as_llava_and_onevision_checkpoints_as_onevision() -> None:
    llava = LlavaConfig(vision_config=CLIPVisionConfig(), text_config=LlamaConfig())
    onevision = LlavaOnevisionConfig(vision_config=SiglipVisionConfig(), text_config=Qwen2Config())
    assert "LlavaForConditionalGeneration" == model_class_for(llava).__name__
    assert "LlavaOnevisionForConditionalGeneration" == model_class_for(onevision).__name__


def test_another_architecture_is_refused_with_the_supported_ones_named() -> None:
    with pytest.raises(ConfigError, match="llava, llava_onevision"):
        model_class_for(Qwen2Config())


def test_the_worker_exits_with_one_clear_line_when_the_checkpoint_cannot_load(tmp_path: Path) -> None:
    env = {
        "GUARDQ_BACKEND": "transformers",
        "GUARDQ_MODEL": "AIML-TUDA/LlavaGuard-v1.1-7B-hf",
        "GUARDQ_LOCAL_MODEL_PATH": str(tmp_path / "no-such-checkpoint"),
        "GUARDQ_LOCAL_DEVICE": "cpu",
        "GUARDQ_REDIS_URL": "redis://127.0.0.1:1/0",
        "HF_HUB_OFFLINE": "1",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker", "--ready-timeout=60"],
        check=False,
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=90,
    )
    assert 2 == done.returncode
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("guardq worker: could not load") and "no-such-checkpoint" in last
