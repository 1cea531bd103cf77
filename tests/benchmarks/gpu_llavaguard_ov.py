"""GPU measurement: the LlavaGuard-v1.2-7B-OV architecture with random weights, images/s at batch sizes 1, 8, 32.

What it builds (no download, no tokenizer, no torchvision): ``LlavaOnevisionForConditionalGeneration`` with the
public llava-onevision-qwen2-7b-ov shapes written out by hand — a SigLIP-so400m/14@384 vision tower (1152 wide,
4304 MLP, 16 heads, 26 layers used, no head), the Qwen2-7B language model (3584 wide, 18944 MLP, 28 layers,
28 query / 4 key-value heads, vocabulary 152064, RoPE theta 1e6), ``anyres_max_9`` with the 6x6 grid of 384 px
pinpoints. The weights are random; only shapes and compute matter for speed and memory.

What one request looks like: one image of ``--image-size`` (default 1152x864, guardq's downscale target for
OV) expanded by the model's own anyres code into its image tokens, then a chat-formatted policy of the real
length (the v1.2 policy text from ``schemas``; its token count is estimated as its byte-level pre-tokens, about
one Qwen2 token per English word or punctuation run), then exactly ``--new-tokens`` sampled tokens with the
seed's sampling values. Rows of a batch are identical in length (no padding); grammar-constrained decoding is
not applied (its cost is CPU-side per step and is not what this measures).

Timings per batch size: *prefill* = a generate call with one new token (vision tower + prompt prefill + one
sample); *full* = the same call with ``--new-tokens``; decode = full - prefill. Reported per image (divided by
the batch size) with images/s = batch / full, and the peak GPU memory of the full call.

Run on a GPU machine (needs only torch + transformers, and this repository for the policy text):
    python tests/benchmarks/gpu_llavaguard_ov.py --out bench-results/gpu_llavaguard_ov.json
Check the script on a CPU in a minute (tiny shapes, batch sizes 1 and 2, 8 new tokens):
    python tests/benchmarks/gpu_llavaguard_ov.py --tiny
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402

from schemas.policy_text import render_policy_text  # noqa: E402
from schemas.taxonomy import PromptVersion  # noqa: E402

IMAGE_TOKEN_ID = 151646
EOS_TOKEN_ID = 151645  # <|im_end|>
# The chatml layout the OV checkpoints use around the image and the policy (lengths matter here, not bytes).
CHAT_PREFIX = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
CHAT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


def pinpoints(side: int) -> list[list[int]]:
    """The anyres grid: every (rows x cols) arrangement of 1..6 tiles of ``side`` pixels."""
    return [[side * r, side * c] for r in range(1, 7) for c in range(1, 7)]


def ov_config(*, tiny: bool) -> Any:
    """LlavaOnevisionConfig with the 7B-OV shapes (or tiny ones of the same structure for a CPU check)."""
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    if tiny:
        vision = SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
            patch_size=14, vision_use_head=False,
        )  # fmt: skip
        text = Qwen2Config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=152064, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        )  # fmt: skip
    else:
        vision = SiglipVisionConfig(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16, image_size=384,
            patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False,
        )  # fmt: skip
        text = Qwen2Config(
            hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1_000_000.0,
            rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False,
        )  # fmt: skip
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN_ID,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=pinpoints(vision.image_size),
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def build_model(config: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Random-weight model created directly on ``device`` in ``dtype``."""
    from transformers import LlavaOnevisionForConditionalGeneration

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = LlavaOnevisionForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(device=device, dtype=dtype).eval()


def count_text_tokens(text: str) -> int:
    """Byte-level pre-tokens (GPT-2/Qwen2 split rules): about one Qwen2 token per word or punctuation run."""
    from tokenizers.pre_tokenizers import ByteLevel

    return len(ByteLevel(add_prefix_space=False).pre_tokenize_str(text))


def image_inputs(
    model: Any, image_hw: tuple[int, int], batch: int, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

    side = model.config.vision_config.image_size
    patches = image_size_to_num_patches(list(image_hw), model.config.image_grid_pinpoints, side)
    return {
        "pixel_values": torch.randn(batch, patches, 3, side, side, device=device, dtype=dtype),
        "image_sizes": torch.tensor([list(image_hw)] * batch, device=device),
    }


def image_token_count(model: Any, images: dict[str, Any]) -> int:
    """How many tokens the model's own anyres code turns one image into (unpadding, max-9 pooling, newlines)."""
    with torch.inference_mode():
        out = model.get_image_features(
            pixel_values=images["pixel_values"][:1],
            image_sizes=images["image_sizes"][:1],
            vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        )
    # transformers 5 returns an output object (pooler_output: per-image features), 4.x the per-image list itself
    first = (out.pooler_output if hasattr(out, "pooler_output") else out)[0]
    return int((first[0] if isinstance(first, (list, tuple)) else first).shape[0])


def prompt_ids(n_image: int, n_prefix: int, n_text: int, batch: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, 151000, (n_prefix,), generator=generator)
    text = torch.randint(0, 151000, (n_text,), generator=generator)
    row = torch.cat([prefix, torch.full((n_image,), IMAGE_TOKEN_ID), text])
    return row.unsqueeze(0).repeat(batch, 1).to(device)


def timed_generate(model: Any, inputs: dict[str, Any], new_tokens: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=True,
            temperature=0.2,
            top_p=0.95,
            top_k=50,
            eos_token_id=EOS_TOKEN_ID,
            pad_token_id=0,
        )
    sync()
    elapsed = time.perf_counter() - started
    assert out.shape[1] == inputs["input_ids"].shape[1] + new_tokens, "generation length differs from the request"
    return elapsed


def measure(model: Any, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    policy = render_policy_text(PromptVersion.V1_2)
    n_prefix = count_text_tokens(CHAT_PREFIX)
    n_text = count_text_tokens("\n" + policy + CHAT_SUFFIX)
    probe = image_inputs(model, args.image_hw, 1, device, dtype)
    n_image = image_token_count(model, probe)
    report: dict[str, Any] = {
        "prompt": {"image_tokens": n_image, "text_tokens": n_prefix + n_text, "total": n_image + n_prefix + n_text},
        "new_tokens": args.new_tokens,
        "image_size": list(args.image_hw),
        "results": [],
    }
    timed_generate(model, {"input_ids": prompt_ids(n_image, n_prefix, n_text, 1, device), **probe}, 2, device)
    for batch in args.batch_sizes:
        row: dict[str, Any] = {"batch_size": batch}
        try:
            inputs = {
                "input_ids": prompt_ids(n_image, n_prefix, n_text, batch, device),
                **image_inputs(model, args.image_hw, batch, device, dtype),
            }
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            prefill = statistics.median(timed_generate(model, inputs, 1, device) for _ in range(args.repeats))
            full = statistics.median(
                timed_generate(model, inputs, args.new_tokens, device) for _ in range(args.repeats)
            )
            decode = max(full - prefill, 0.0)
            row |= {
                "images_per_s": round(batch / full, 3),
                "output_tokens_per_s": round(batch * args.new_tokens / full, 1),
                "prefill_ms_per_image": round(prefill / batch * 1000, 2),
                "decode_ms_per_image": round(decode / batch * 1000, 2),
                "decode_ms_per_step": round(decode / max(args.new_tokens - 1, 1) * 1000, 2),
                "batch_s": round(full, 3),
            }
            if device.type == "cuda":
                row["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        except torch.cuda.OutOfMemoryError:
            row["error"] = "out of GPU memory"
            torch.cuda.empty_cache()
        report["results"].append(row)
        print_row(row, flush=True)
    return report


COLUMNS = (
    ("batch_size", "batch"),
    ("images_per_s", "img/s"),
    ("output_tokens_per_s", "out tok/s"),
    ("prefill_ms_per_image", "prefill ms/img"),
    ("decode_ms_per_image", "decode ms/img"),
    ("decode_ms_per_step", "ms/step"),
    ("peak_gpu_mem_gib", "peak GiB"),
)


def print_row(row: dict[str, Any], *, header: bool = False, flush: bool = False) -> None:
    if header:
        print(" | ".join(f"{title:>14}" for _, title in COLUMNS))
        return
    if "error" in row:
        print(f"{row['batch_size']:>14} | {row['error']}", flush=flush)
        return
    print(" | ".join(f"{row.get(key, '-')!s:>14}" for key, _ in COLUMNS), flush=flush)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes of the same structure (CPU check)")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,8,32; tiny: 1,2)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens generated per image (default 120)")
    parser.add_argument("--image-size", default=None, help="HxW of each image (default 864x1152)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (median)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "gpu_llavaguard_ov.json")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,2" if args.tiny else "1,8,32")).split(",")]
    args.new_tokens = args.new_tokens or (8 if args.tiny else 120)
    height, width = (int(v) for v in (args.image_size or ("63x84" if args.tiny else "864x1152")).split("x"))
    args.image_hw = (height, width)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    started = time.perf_counter()
    model = build_model(ov_config(tiny=args.tiny), device, dtype)
    params = sum(p.numel() for p in model.parameters())
    weights_gib = round(torch.cuda.memory_allocated() / 2**30, 2) if device.type == "cuda" else None
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"LlavaGuard-v1.2-7B-OV architecture{' (TINY)' if args.tiny else ''}, random weights: {params / 1e9:.2f} B params, "
        f"{dtype}, built in {time.perf_counter() - started:.1f}s on {card}"
        + (f", weights {weights_gib} GiB" if weights_gib is not None else "")
    )
    print_row({}, header=True)
    report = measure(model, args, device, dtype)
    report |= {
        "model": "LlavaGuard-v1.2-7B-OV architecture (random weights)" + (" TINY" if args.tiny else ""),
        "params": params,
        "dtype": str(dtype).removeprefix("torch."),
        "device": card,
        "weights_gib": weights_gib,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    }
    print(
        f"prompt per image: {report['prompt']['image_tokens']} image + {report['prompt']['text_tokens']} text tokens; "
        f"{args.new_tokens} new tokens"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
