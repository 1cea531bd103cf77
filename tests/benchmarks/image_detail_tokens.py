"""Image tokens per image-detail level (``native`` / ``base``), counted by the models' own code on a CPU.

For each LlavaGuard family whose processor tiles large images (34B: LLaVA-1.6 ``anyres``; v1.2 OneVision:
``anyres_max_9``) and a few common photo shapes, this sends a picture through guardq's own downscale
(``worker.image.prepare_image`` at ``ModelSpec.image_side(level)``) and hands the resulting size to the
transformers model class of that family (``LlavaNextForConditionalGeneration`` /
``LlavaOnevisionForConditionalGeneration``), whose ``get_image_features`` does the tiling, unpadding, pooling
and row-end tokens. The vision grid is the checkpoint's (CLIP-L/14 at 336 px with the 1.6 pinpoints; SigLIP/14 at
384 px with the 6x6 OneVision pinpoints); widths and depths are tiny and the weights random, which changes no
count. LLaVA-1.5-based checkpoints (v1.0/v1.1 7B and 13B) see 576 tokens at either level (one 336 px image).

    .venv/bin/python tests/benchmarks/image_detail_tokens.py [--out bench-results/image_detail_tokens.json]

Images/s per level on the H200 were not measured (no 34B or OneVision checkpoint was built for SGLang); the
report adds the prefill-bound estimate from the measured 7B prefill rate, marked as an estimate.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from schemas.models import get_model  # noqa: E402
from worker.image import prepare_image  # noqa: E402

SHAPES = {"4:3 photo": (4000, 3000), "3:4 portrait": (3000, 4000), "16:9": (1920, 1080), "1:1": (2048, 2048)}
PREFILL_TOKENS_PER_S = 37_000  # measured on the H200 for the 7B LLaVA-1.5 shape (docs/performance.md)
POLICY_TOKENS = {"AIML-TUDA/LlavaGuard-34B": 1_300, "AIML-TUDA/LlavaGuard-v1.2-7B-OV": 1_100}  # approximate


def tiny_text() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=1000)  # fmt: skip


def next_model() -> Any:
    """LLaVA-1.6 (the 34B's family): CLIP-L/14 at 336 px, the five 1.6 pinpoints, CLS dropped ("default")."""
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=336, patch_size=14, projection_dim=32)  # fmt: skip
    config = LlavaNextConfig(
        vision_config=vision, text_config=tiny_text(), image_token_index=999,
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        vision_feature_select_strategy="default", vision_feature_layer=-1,
    )  # fmt: skip
    return LlavaNextForConditionalGeneration(config).eval()


def onevision_model() -> Any:
    from transformers import LlavaOnevisionForConditionalGeneration, SiglipVisionConfig

    from tests.benchmarks.gpu_llavaguard_ov import ov_config

    config = ov_config(tiny=True)
    config.vision_config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                              num_attention_heads=2, image_size=384, patch_size=14,
                                              vision_use_head=False)  # fmt: skip
    config.image_grid_pinpoints = [[384 * r, 384 * c] for r in range(1, 7) for c in range(1, 7)]
    return LlavaOnevisionForConditionalGeneration(config).eval()


def count(model: Any, width: int, height: int) -> int:
    """Image tokens the model's own code makes of one ``width`` x ``height`` image."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    side = model.config.vision_config.image_size
    patches = image_size_to_num_patches([height, width], model.config.image_grid_pinpoints, side)
    pixel_values = torch.zeros(1, patches, 3, side, side)
    sizes = torch.tensor([[height, width]])
    with torch.inference_mode():
        out = model.get_image_features(
            pixel_values=pixel_values,
            image_sizes=sizes,
            vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        )
    features = out.pooler_output if hasattr(out, "pooler_output") else out
    if isinstance(features, (list, tuple)) and features and features[0].dim() == 3:  # per-tile, before packing
        packed, _ = model.model.pack_image_features(
            features, sizes, vision_feature_select_strategy=model.config.vision_feature_select_strategy,
            image_newline=model.model.image_newline,
        )  # fmt: skip
        return int(packed.shape[0])
    first = features[0]
    return int((first[0] if isinstance(first, (list, tuple)) else first).shape[0])


def picture(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 160)).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def run() -> dict[str, Any]:
    torch.manual_seed(0)
    families = {"AIML-TUDA/LlavaGuard-34B": next_model(), "AIML-TUDA/LlavaGuard-v1.2-7B-OV": onevision_model()}
    report: dict[str, Any] = {"prefill_tokens_per_s_assumed": PREFILL_TOKENS_PER_S, "models": {}}
    for name, model in families.items():
        spec = get_model(name)
        rows = []
        for shape, (w, h) in SHAPES.items():
            row: dict[str, Any] = {"shape": shape, "source": f"{w}x{h}"}
            for level in ("native", "base"):
                prepared = prepare_image(picture(w, h), max_side=spec.image_side(level), max_pixels=10**9)
                sent_w, sent_h = Image.open(io.BytesIO(prepared.payload)).size  # what the model gets
                tokens = count(model, sent_w, sent_h)
                prompt = tokens + POLICY_TOKENS[name]
                row[level] = {"sent": f"{sent_w}x{sent_h}", "image_tokens": tokens,
                              "prompt_tokens": prompt,
                              "images_per_s_estimate": round(PREFILL_TOKENS_PER_S / prompt, 1)}  # fmt: skip
            row["image_tokens_saved"] = round(1 - row["base"]["image_tokens"] / row["native"]["image_tokens"], 3)
            rows.append(row)
        report["models"][name] = rows
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "image_detail_tokens.json")
    args = parser.parse_args()
    report = run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"{'model':34} {'shape':13} {'native sent':>11} {'tokens':>6} {'base sent':>9} {'tokens':>6} {'saved':>6}")
    for name, rows in report["models"].items():
        for r in rows:
            n, b = r["native"], r["base"]
            print(f"{name:34} {r['shape']:13} {n['sent']:>11} {n['image_tokens']:>6} {b['sent']:>9} "
                  f"{b['image_tokens']:>6} {r['image_tokens_saved']:>6.0%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
