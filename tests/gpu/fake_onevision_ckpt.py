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
import os
import sys

import torch
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


def main():
    from ov_ckpt_check import check, image_tokens  # beside this file: sys.path[0] when run as a script

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
