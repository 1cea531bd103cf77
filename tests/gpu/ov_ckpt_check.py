"""``fake_onevision_ckpt.py --check``: every weight of a built checkpoint against the shapes SGLang 0.5.17 derives
from its config, and the image-token count of its processor (kept apart so each file stays small)."""

import json
import math
import os
import re

import torch
from fake_onevision_ckpt import MODEL_DIR, PATCH, SIDE, SPECIALS, TOWER_PREFIX
from safetensors import safe_open


def expected_shapes(cfg, tower_params):
    """name -> shape that SGLang 0.5.17's LlavaQwenForCausalLM.load_weights accepts, from the config:
    Qwen2 (q/k/v with bias, head_dim = hidden // heads unless given), mlp2x_gelu projector (mm_hidden -> hidden ->
    hidden, with bias), image_newline (hidden) when mm_patch_merge_type has "unpad", and the tower copy
    model.vision_tower.vision_tower.vision_model.X for every parameter X of the tower dir's SiglipVisionModel."""
    H, F, L, NH, NKV, V = (
        cfg[k]
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "vocab_size",
        )
    )
    hd = cfg.get("head_dim") or H // NH
    want = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    if not cfg.get("tie_word_embeddings", False):
        want["lm_head.weight"] = (V, H)
    for i in range(L):
        p = f"model.layers.{i}."
        want.update(
            {
                p + "self_attn.q_proj.weight": (NH * hd, H),
                p + "self_attn.q_proj.bias": (NH * hd,),
                p + "self_attn.k_proj.weight": (NKV * hd, H),
                p + "self_attn.k_proj.bias": (NKV * hd,),
                p + "self_attn.v_proj.weight": (NKV * hd, H),
                p + "self_attn.v_proj.bias": (NKV * hd,),
                p + "self_attn.o_proj.weight": (H, NH * hd),
                p + "mlp.gate_proj.weight": (F, H),
                p + "mlp.up_proj.weight": (F, H),
                p + "mlp.down_proj.weight": (H, F),
                p + "input_layernorm.weight": (H,),
                p + "post_attention_layernorm.weight": (H,),
            }
        )
    want.update(
        {
            "model.mm_projector.0.weight": (H, cfg["mm_hidden_size"]),
            "model.mm_projector.0.bias": (H,),
            "model.mm_projector.2.weight": (H, H),
            "model.mm_projector.2.bias": (H,),
        }
    )
    if "unpad" in cfg.get("mm_patch_merge_type", ""):
        want["model.image_newline"] = (H,)
    for name, shape in tower_params.items():
        want[TOWER_PREFIX + name.removeprefix("vision_model.")] = tuple(shape)
    return want


def image_tokens(cfg, width, height):
    """Image tokens one width x height image takes in SGLang 0.5.17's llava.py (pad_input_ids, single image,
    anyres*): a 729-token base tile + the unpadded tile grid (anyres_max_N: shrunk past 1.1x N tiles) with one
    image_newline per row. Our own arithmetic on the same formulas (mm_utils: select_best_resolution,
    unpad_image_shape)."""
    grid = cfg["image_grid_pinpoints"]
    side = SIDE // PATCH  # patches per tile side (27)
    best, best_eff, best_waste = None, -1, math.inf
    for w, h in grid:  # (width, height) pairs
        scale = min(w / width, h / height)
        eff = min(int(width * scale) * int(height * scale), width * height)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (w, h), eff, waste
    gh, gw = best[1] // SIDE * side, best[0] // SIDE * side
    if width / height > gw / gh:  # unpad_image_shape: crop the letterbox rows or columns
        gh -= 2 * ((gh - int(height * (gw / width))) // 2)
    else:
        gw -= 2 * ((gw - int(width * (gh / height))) // 2)
    m = re.match(r"anyres_max_(\d+)", cfg["image_aspect_ratio"])
    if m:
        times = math.sqrt(gh * gw / (int(m.group(1)) * side * side))
        if times > 1.1:
            gh, gw = int(gh // times), int(gw // times)
    return side * side + gh * (gw + 1)


def check(out):
    """Compare OUT/ov-rand against what SGLang 0.5.17 loads; print one JSON line; return the problems."""
    from transformers import AutoProcessor, AutoTokenizer, SiglipVisionModel

    model_dir = os.path.join(out, MODEL_DIR)
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    bad = []
    tower_path = cfg["mm_vision_tower"]
    if "clip" in tower_path or "siglip" not in tower_path:
        bad.append(f"mm_vision_tower {tower_path!r}: sglang needs 'siglip' and no 'clip' in it")
    tower = SiglipVisionModel.from_pretrained(tower_path, dtype=torch.float16)
    tc = tower.config
    if (tc.image_size, tc.patch_size, tc.hidden_size) != (SIDE, PATCH, cfg["mm_hidden_size"]):
        bad.append(f"tower image/patch/hidden {(tc.image_size, tc.patch_size, tc.hidden_size)}")
    tower_params = {n: tuple(p.shape) for n, p in tower.named_parameters()}
    want = expected_shapes(cfg, tower_params)

    with open(os.path.join(model_dir, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    have = {}
    for shard in sorted(set(weight_map.values())):
        with safe_open(os.path.join(model_dir, shard), framework="pt") as st:
            for k in st.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                have[k] = tuple(st.get_slice(k).get_shape())
                if weight_map.get(k) != shard:
                    bad.append(f"{k}: in {shard}, index says {weight_map.get(k)}")
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    bad += [f"missing {k} {want[k]}" for k in missing[:10]] + [f"unexpected {k}" for k in extra[:10]]
    bad += [f"{k}: {have[k]} != {want[k]}" for k in wrong[:10]]

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
        "Assess the image.<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    image_id = cfg["image_token_index"]
    if ids.count(image_id) != 1 or tok.convert_ids_to_tokens(image_id) != "<image>":
        bad.append(f"<image> is not the single token {image_id} in {ids[:24]}")
    for t in SPECIALS[:3]:
        if len(tok(t, add_special_tokens=False)["input_ids"]) != 1:
            bad.append(f"{t} is not one token")
    if len(tok) > cfg["vocab_size"] or tok.decode(tok("The image shows")["input_ids"]) != "The image shows":
        bad.append(f"tokenizer: {len(tok)} tokens for vocab {cfg['vocab_size']}, or no round trip")
    proc = AutoProcessor.from_pretrained(model_dir).image_processor  # what sglang's get_processor loads
    if (proc.size["height"], proc.size["width"], list(proc.image_mean), list(proc.image_std)) != (
        SIDE,
        SIDE,
        [0.5] * 3,
        [0.5] * 3,
    ):
        bad.append(f"image processor {type(proc).__name__} size {proc.size} mean {proc.image_mean}")
    grid = cfg["image_grid_pinpoints"]
    if "anyres" not in cfg["image_aspect_ratio"] or any(d % SIDE for pair in grid for d in pair):
        bad.append("image_aspect_ratio / image_grid_pinpoints")
    print(
        json.dumps(
            {
                "check": "ok" if not bad else "FAILED",
                "weights": len(have),
                "expected": len(want),
                "missing": len(missing),
                "unexpected": len(extra),
                "wrong_shape": len(wrong),
                "tokenizer": type(tok).__name__,
                "image_processor": type(proc).__name__,
                "image_tokens": {
                    f"{w}x{h}": image_tokens(cfg, w, h) for w, h in ((1152, 864), (864, 1152), (384, 384), (768, 576))
                },
                "problems": bad[:30],
            }
        )
    )
    return bad
