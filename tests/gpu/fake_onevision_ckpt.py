"""Build an offline, random-weight LLaVA-OneVision checkpoint (lmms-lab layout, LlavaQwenForCausalLM: the
shape of AIML-TUDA/LlavaGuard-v1.2-7B-OV) that SGLang 0.5.17 serves with
    python3 -m sglang.launch_server --model-path OUT/ov-rand --chat-template chatml-llava ...
No hub access needed.

Writes two folders under OUT:
  OUT/siglip-so400m-patch14-384-rand/  vision tower saved by transformers (SiglipVisionModel). The path must contain
                             "siglip" and not "clip": sglang's llava.py load_weights picks CLIPVisionModel if
                             "clip" is in config.mm_vision_tower, else SiglipVisionModel if "siglip" is.
  OUT/ov-rand/               config.json (model_type llava, top-level Qwen2 fields, mm_* fields, anyres_max_9,
                             spatial_unpad, the 6x6 384 px pinpoints), sharded model-*.safetensors + index with
                             lmms-lab names (model.layers.*, lm_head, model.mm_projector.{0,2}, model.image_newline,
                             model.vision_tower.vision_tower.vision_model.*: the tower copy sglang loads over the
                             tower dir's weights), and a Qwen2-style (chatml) tokenizer + SiglipImageProcessor +
                             LlavaProcessor, so --model-path alone is enough (no --tokenizer-path).

usage: python3 fake_onevision_ckpt.py OUT [--size tiny|7b] [--device cpu|cuda] [--dtype float16|bfloat16]
       python3 fake_onevision_ckpt.py OUT --check     shapes of every weight against the config (sglang's formulas),
                                                      tokenizer, processor and tower load; exits 1 on a mismatch
tiny: 2-layer 256-wide Qwen2 + 2-layer 128-wide SigLIP at 384 px / patch 14 (729 tokens a tile), seconds on a CPU.
7b:   Qwen2-7B (28x3584, 28 heads / 4 KV heads, vocab 152064) + SigLIP so400m (27x1152), ~16 GB fp16, build on cuda.
"""

import argparse
import inspect
import json
import math
import os
import re
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SIDE, PATCH = 384, 14  # SigLIP so400m-patch14-384: both sizes are the real ones at every --size
TOWER_DIR, MODEL_DIR = "siglip-so400m-patch14-384-rand", "ov-rand"
TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."  # lmms-lab's names for the tower copy
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
SIZES = {  # hidden, MLP, layers, heads, KV heads, vocab | vision hidden, MLP, layers, heads
    "tiny": {"H": 256, "F": 688, "L": 2, "NH": 4, "NKV": 2, "VOCAB": 8192, "vH": 128, "vF": 256, "vL": 2, "vNH": 4},
    "7b": {
        "H": 3584,
        "F": 18944,
        "L": 28,
        "NH": 28,
        "NKV": 4,
        "VOCAB": 152064,
        "vH": 1152,
        "vF": 4304,
        "vL": 27,
        "vNH": 16,
    },
}
SHARD_BYTES = {"tiny": 2 << 20, "7b": 3 << 30}
# the Qwen2 pre-tokenizer split (same regex transformers' Qwen2Tokenizer installs, so a reload is identical)
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CHATML_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def pinpoints():
    """OneVision's anyres grid: (384 r, 384 c) for r, c in 1..6, from (384, 384) to (2304, 2304)."""
    return [[SIDE * r, SIDE * c] for r in range(1, 7) for c in range(1, 7)]


def build_tokenizer(tok_dir):
    """Byte-level BPE (Qwen2 pipeline) trained on stdlib text; specials <|endoftext|> <|im_start|> <|im_end|>
    <image> (ids 0-3, each one token), saved as Qwen2Tokenizer (tokenizer.json + tokenizer_config.json)."""
    import collections
    import email
    import logging
    import textwrap

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer

    corpus = [inspect.getsource(m) for m in (collections, email, json, logging, textwrap, argparse, inspect)]
    corpus += [
        '{"rating": "Unsafe", "category": "O1: Hate, Humiliation, Harassment", "rationale": "..."}',
        '{"rating": "Safe", "category": "NA: None applying", "rationale": "The image shows"}',
    ] * 50
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8000, min_frequency=2, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    os.makedirs(tok_dir, exist_ok=True)
    tok.save(os.path.join(tok_dir, "tokenizer.json"))
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIALS
    }
    with open(os.path.join(tok_dir, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "tokenizer_class": "Qwen2Tokenizer",
                "added_tokens_decoder": added,
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "additional_special_tokens": SPECIALS[1:],
                "model_max_length": 32768,
                "errors": "replace",
                "split_special_tokens": False,
                "clean_up_tokenization_spaces": False,
                "add_prefix_space": False,
                "chat_template": CHATML_TEMPLATE,
            },
            f,
            indent=2,
        )
    return AutoTokenizer.from_pretrained(tok_dir)


def image_processor_class():
    """SiglipImageProcessor (torchvision backend in transformers 5) or, without torchvision, its PIL twin; either
    saves a preprocessor_config.json that AutoImageProcessor maps back to the backend available at load time."""
    import transformers

    cls = transformers.SiglipImageProcessor
    try:
        cls()
        return cls
    except ImportError:
        return transformers.SiglipImageProcessorPil


def vision_config(s):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=s["vH"],
        intermediate_size=s["vF"],
        num_hidden_layers=s["vL"],
        num_attention_heads=s["vNH"],
        image_size=SIDE,
        patch_size=PATCH,
        num_channels=3,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        attention_dropout=0.0,
    )


def model_config(s, tower_dir, tok, dtype_name):
    """lmms-lab/llava-onevision-qwen2-7b-ov's config.json fields (sglang reads the top-level Qwen2 fields:
    get_hf_text_config returns the config itself for Llava*ForCausalLM)."""
    eot, im_end, image_id = (tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<image>"))
    return {
        "architectures": ["LlavaQwenForCausalLM"],
        "model_type": "llava",
        "hidden_size": s["H"],
        "intermediate_size": s["F"],
        "num_hidden_layers": s["L"],
        "num_attention_heads": s["NH"],
        "num_key_value_heads": s["NKV"],
        "vocab_size": s["VOCAB"],
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "max_window_layers": s["L"],
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "attention_dropout": 0.0,
        "sliding_window": 131072,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": dtype_name,
        "bos_token_id": eot,
        "eos_token_id": im_end,
        "pad_token_id": eot,
        "image_token_index": image_id,
        "mm_vision_tower": os.path.abspath(tower_dir),
        "mm_hidden_size": s["vH"],
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "spatial_unpad",
        "mm_newline_position": "grid",
        "mm_spatial_pool_mode": "bilinear",
        "mm_resampler_type": None,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model",
        "use_mm_proj": True,
        "image_aspect_ratio": "anyres_max_9",
        "image_grid_pinpoints": pinpoints(),
        "image_crop_resolution": None,
        "image_split_resolution": None,
        "vision_tower_pretrained": None,
        "tokenizer_model_max_length": 32768,
        "tokenizer_padding_side": "right",
    }


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--dtype",
        choices=["float16", "bfloat16"],
        default="float16",
        help="sglang runs Llava*ForCausalLM in float16 whatever the checkpoint holds",
    )
    ap.add_argument("--check", action="store_true", help="only check an existing OUT")
    a = ap.parse_args()
    if a.check:
        sys.exit(1 if check(a.out) else 0)
    from transformers import LlavaProcessor, SiglipVisionModel

    s, dev, dt = SIZES[a.size], a.device, getattr(torch, a.dtype)
    tower_dir, model_dir = os.path.join(a.out, TOWER_DIR), os.path.join(a.out, MODEL_DIR)
    assert "clip" not in os.path.abspath(tower_dir), "sglang would load the tower as CLIP: pick another OUT"
    for d in (tower_dir, model_dir):
        os.makedirs(d, exist_ok=True)
    torch.manual_seed(0)

    # 1. vision tower (random, transformers' own init), made on the device
    with torch.device(dev):
        tower = SiglipVisionModel(vision_config(s)).to(dt)
    tower.save_pretrained(tower_dir)

    # 2. tokenizer + SigLIP image processor + LlavaProcessor in the model dir
    tok = build_tokenizer(model_dir)
    assert len(tok) <= s["VOCAB"], (len(tok), s["VOCAB"])
    improc = image_processor_class()(
        size={"height": SIDE, "width": SIDE},
        resample=3,
        do_resize=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )
    LlavaProcessor(
        image_processor=improc,
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="full",
        image_token="<image>",
        num_additional_image_tokens=0,
        chat_template=CHATML_TEMPLATE,
    ).save_pretrained(model_dir)

    # 3. config + generation config
    cfg = model_config(s, tower_dir, tok, a.dtype)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(model_dir, "generation_config.json"), "w") as f:
        json.dump(
            {
                "bos_token_id": cfg["bos_token_id"],
                "eos_token_id": [cfg["eos_token_id"], cfg["bos_token_id"]],
                "pad_token_id": cfg["pad_token_id"],
            },
            f,
        )

    # 4. weights with lmms-lab names, random N(0, 0.02) made on the device, shards of ~SHARD_BYTES
    H, F, L, NH, NKV, V = (s[k] for k in ("H", "F", "L", "NH", "NKV", "VOCAB"))
    hd = H // NH

    def rnd(*shape):
        return torch.randn(*shape, device=dev, dtype=dt).mul_(0.02).cpu()

    def const(v, n):
        return torch.full((n,), v, dtype=dt)

    shard, shards, idx = {}, [], {}

    def put(name, t):
        shard[name] = t.contiguous()
        if sum(x.numel() * x.element_size() for x in shard.values()) >= SHARD_BYTES[a.size]:
            flush()

    def flush():
        if shard:
            name = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(dict(shard), os.path.join(model_dir, name), metadata={"format": "pt"})
            idx.update(dict.fromkeys(shard, name))
            shards.append(name)
            shard.clear()

    put("model.embed_tokens.weight", rnd(V, H))
    for i in range(L):
        p = f"model.layers.{i}."
        for n, shape in (
            ("self_attn.q_proj", (NH * hd, H)),
            ("self_attn.k_proj", (NKV * hd, H)),
            ("self_attn.v_proj", (NKV * hd, H)),
        ):
            put(p + n + ".weight", rnd(*shape))
            put(p + n + ".bias", rnd(shape[0]))
        put(p + "self_attn.o_proj.weight", rnd(H, NH * hd))
        put(p + "mlp.gate_proj.weight", rnd(F, H))
        put(p + "mlp.up_proj.weight", rnd(F, H))
        put(p + "mlp.down_proj.weight", rnd(H, F))
        put(p + "input_layernorm.weight", const(1.0, H))
        put(p + "post_attention_layernorm.weight", const(1.0, H))
    put("model.norm.weight", const(1.0, H))
    put("lm_head.weight", rnd(V, H))
    put("model.mm_projector.0.weight", rnd(H, s["vH"]))
    put("model.mm_projector.0.bias", const(0.0, H))
    put("model.mm_projector.2.weight", rnd(H, H))
    put("model.mm_projector.2.bias", const(0.0, H))
    put("model.image_newline", rnd(H))
    for n, t in tower.state_dict().items():  # the tower copy inside the checkpoint, as lmms-lab ships it
        put(TOWER_PREFIX + n.removeprefix("vision_model."), t.detach().to(dt).cpu())
    flush()
    total = sum(os.path.getsize(os.path.join(model_dir, n)) for n in shards)
    with open(os.path.join(model_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": idx}, f, indent=1)
    print(
        json.dumps(
            {
                "model": model_dir,
                "tokenizer": model_dir,
                "siglip": tower_dir,
                "vocab": len(tok),
                "vocab_size": V,
                "image_token_index": cfg["image_token_index"],
                "eos_token_id": cfg["eos_token_id"],
                "shards": len(shards),
                "bytes": total,
                "image_tokens_1152x864": image_tokens(cfg, 1152, 864),
            }
        )
    )


if __name__ == "__main__":
    main()
