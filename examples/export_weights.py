#!/usr/bin/python3
"""Export a PyTorch attention module for attn_run, and check attn_run's output against PyTorch.

Step 1 (needs PyTorch: /usr/bin/python3 with python3-torch and python3-numpy):

    /usr/bin/python3 examples/export_weights.py --module multi_head_attention \\
        --embed-dim 64 --num-heads 8 --out-dir check

builds the module as PyTorch defines it, gives it random weights (or loads yours with
--state-dict), runs it on a random input and writes, in safetensors format:

    check/weights.safetensors    the state_dict (PyTorch's names; under --prefix if given)
    check/inputs.safetensors     x, or query/key/value [key_padding_mask] [attn_mask]
    check/expected.safetensors   PyTorch's output [and attn_weights]

and prints the second command, which runs attn_run on those files and compares:

    build/examples/attn_run/attn_run --module multi_head_attention ... \\
        --output check/output.safetensors && /usr/bin/python3 examples/export_weights.py --compare check

--compare DIR reads DIR/expected.safetensors and DIR/output.safetensors, prints the largest
error and exits 1 if it is above the tolerance: max |attn - torch| <= tol * max |torch|,
tol = 1e-5 for float32 and 1e-12 for float64 (with --kv-cache-dtype, one rounding of the
cache's storage: KV_TOLERANCE). --run ATTN_RUN does steps 1 and 2 at once.

Modules (the constructor flags are attn_run's, see attn_run --help):
    self_attention        SingleHeadSelfAttention(E)
    multi_head_attention  --layout torch:     nn.MultiheadAttention(E, H, bias, add_bias_kv,
                                              add_zero_attn, kdim, vdim, batch_first=True)
                          --layout separate:  SeparateProjectionMultiHeadAttention(E, H)  (q.weight, ...)
                          --layout mobilevit: MobileViTAttention(E, H, bias)  (qkv_proj.weight, ...)
    talking_heads         timm CaiT TalkingHeadAttn(E, H=8, qkv_bias)
    attention_block       AttentionBlock(E, H): nn.MultiheadAttention + residual + LayerNorm,
                          input (B, E, L)
    transformer_encoder   MobileViTTransformerEncoder(E, F, H=8): MobileViT's pre-norm layer
    transformer_encoder_layer  nn.TransformerEncoderLayer(E, H, F, dropout=0, activation,
                          batch_first=True, norm_first), input x
    transformer_decoder_layer  nn.TransformerDecoderLayer(...) likewise, inputs tgt (B, L, E) and
                          memory (B, S, E) (S: --source-length), causal tgt_mask
    gqa_attention         LlamaAttention(E, H, K, head_dim, qkv_bias, rope, rotary_dim, rope_theta,
                          interleaved, sliding_window, softcap, sinks): HF Llama / Mistral / Qwen2
                          / gpt-oss attention, causal
All but nn.MultiheadAttention and the torch.nn layers are defined in torch_reference.py, next
to this script. --incremental C is passed on to attn_run (gqa_attention, the decoder layer and
multi_head_attention with --causal run through a KV cache C tokens at a time; PyTorch's
reference is the full causal pass), and so is --page-size P (the cache paged). gqa_attention
and multi_head_attention take --key-padding-mask, which attn_run's incremental runs cut to the
tokens cached so far.

Your own model: --state-dict FILE.pt (a state_dict or a whole module saved with torch.save)
and, when the module is part of a bigger model, --prefix (e.g. blocks.0.attn.). The
checkpoint's floating-point tensors are written as they are (F16/BF16 as F32) and attn_run
picks the module out with the same --prefix.

The forward pass runs with autograd on (parameters require grad), so nn.MultiheadAttention
takes its reference (non-fast) path. Masks (--key-padding-mask, --attn-mask; torch layout
only) are drawn so that no query row has every key masked: PyTorch 1.13 gives NaN there,
attn gives 0.
"""
import argparse
import json
import os
import shlex
import struct
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_ATTN_RUN = REPO / "build" / "examples" / "attn_run" / "attn_run"

MODULES = ("self_attention", "multi_head_attention", "talking_heads", "attention_block", "transformer_encoder",
           "transformer_encoder_layer", "transformer_decoder_layer", "gqa_attention")
TORCH_LAYER_FLAGS = {"num_heads", "ffn_dim", "activation", "norm_first"}
# Constructor flags each module takes (argparse dest names), as in attn_run.
MODULE_FLAGS = {
    "self_attention": set(),
    "multi_head_attention": {"num_heads", "kdim", "vdim", "no_bias", "add_bias_kv", "add_zero_attn", "layout",
                             "source_length", "key_padding_mask", "attn_mask", "need_weights", "per_head_weights",
                             "causal", "incremental", "page_size"},
    "talking_heads": {"num_heads", "qkv_bias"},
    "attention_block": {"num_heads"},
    "transformer_encoder": {"num_heads", "ffn_dim"},
    "transformer_encoder_layer": TORCH_LAYER_FLAGS,
    "transformer_decoder_layer": TORCH_LAYER_FLAGS | {"source_length", "incremental", "page_size"},
    "gqa_attention": {"num_heads", "num_kv_heads", "head_dim", "rope_theta", "no_rope", "rotary_dim",
                      "rope_interleaved", "qkv_bias", "sliding_window", "softcap", "incremental", "key_padding_mask",
                      "kv_cache_dtype", "page_size", "sinks"},
}
REQUIRED = {"multi_head_attention": {"num_heads"}, "attention_block": {"num_heads"},
            "transformer_encoder": {"ffn_dim"}, "transformer_encoder_layer": {"num_heads", "ffn_dim"},
            "transformer_decoder_layer": {"num_heads", "ffn_dim"}, "gqa_attention": {"num_heads", "num_kv_heads"}}
# Flags passed on to attn_run as they are: (dest, attn_run takes a value).
PASSED_ON = [("num_kv_heads", True), ("head_dim", True), ("rope_theta", True), ("no_rope", False),
             ("rotary_dim", True), ("rope_interleaved", False), ("sliding_window", True), ("softcap", True),
             ("activation", True), ("norm_first", False), ("incremental", True), ("causal", False),
             ("kv_cache_dtype", True), ("page_size", True), ("sinks", False)]
TOLERANCE = {"F32": 1e-5, "F64": 1e-12}
# --kv-cache-dtype: about one rounding of the cache's storage: half the unit roundoff of
# bfloat16 and float16; for int8 half a quantisation step of a row as large as the output,
# 1 / 254. attn's and PyTorch's float32 projections differ in their
# last bits, so now and then a key or value rounds the other way in one of them, which moves
# an output by about that much.
KV_TOLERANCE = {"bfloat16": 2.0 ** -9, "float16": 2.0 ** -12, "int8": 1.0 / 254}


# ----------------------------------------------------------------------------
# safetensors, read and written with struct + json + numpy (no safetensors package)
# ----------------------------------------------------------------------------

def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: numpy array} (float32, float64 or bool), written in the given order."""
    import numpy as np
    kinds = {np.dtype("float32"): ("F32", "<f4"), np.dtype("float64"): ("F64", "<f8"), np.dtype("bool"): ("BOOL", "u1")}
    header = {"__metadata__": dict(metadata)} if metadata else {}
    blobs, offset = [], 0
    for name, a in tensors.items():
        st_dtype, np_dtype = kinds[a.dtype]
        blob = np.ascontiguousarray(a).astype(np_dtype, copy=False).tobytes()
        header[name] = {"dtype": st_dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path):
    """{name: numpy array} for F32, F64, BOOL and U8 tensors."""
    import numpy as np
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    kinds = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "BOOL": np.dtype("bool"), "U8": np.dtype("u1")}
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + begin:8 + n + end], dtype=kinds[info["dtype"]]).reshape(info["shape"])
    return out


# ----------------------------------------------------------------------------
# --compare
# ----------------------------------------------------------------------------

def compare(out_dir, output=None):
    """Prints the error of every expected tensor; returns 0 if all are within tolerance."""
    import numpy as np
    out_dir = Path(out_dir)
    expected_path, output_path = out_dir / "expected.safetensors", Path(output or out_dir / "output.safetensors")
    with open(expected_path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        dtypes = {k: v["dtype"] for k, v in header.items() if k != "__metadata__"}
        stored_tolerance = header.get("__metadata__", {}).get("tolerance")
    expected = read_safetensors(expected_path)
    try:
        got = read_safetensors(output_path)
    except OSError as e:
        print(f"compare: cannot read attn_run's output: {e}", file=sys.stderr)
        return 1
    status = 0
    for name, ref in expected.items():
        tol = float(stored_tolerance) if stored_tolerance else TOLERANCE[dtypes[name]]
        if name not in got:
            print(f"{name}: missing from {output_path}: FAIL")
            status = 1
            continue
        a = got[name]
        if a.shape != ref.shape or a.dtype != ref.dtype:
            print(f"{name}: attn_run gives {a.dtype}{list(a.shape)}, PyTorch {ref.dtype}{list(ref.shape)}: FAIL")
            status = 1
            continue
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        err = float(np.abs(a.astype(np.float64) - ref.astype(np.float64)).max()) if ref.size else 0.0
        ok = np.isfinite(a).all() and err <= tol * max(scale, np.finfo(np.float64).tiny)
        rel = err / scale if scale > 0 else err
        print(f"{name} {list(ref.shape)} {dtypes[name]}: max |attn - torch| = {err:.3g}, max |torch| = {scale:.3g}, "
              f"relative {rel:.3g} (tolerance {tol:g}): {'OK' if ok else 'FAIL'}")
        status |= 0 if ok else 1
    for name in got:
        if name not in expected:
            print(f"{name}: in {output_path} but not expected: FAIL")
            status = 1
    return status


# ----------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------

def reinit(module, torch):
    """Random parameters with non-trivial biases: matrices randn / sqrt(fan_in), LayerNorm
    weights 1 + 0.3 randn, everything else (biases, bias_k, bias_v) 0.3 randn."""
    with torch.no_grad():
        for mod in module.modules():
            for name, p in mod.named_parameters(recurse=False):
                r = torch.randn(p.shape, dtype=p.dtype)
                if isinstance(mod, torch.nn.LayerNorm) and name == "weight":
                    p.copy_(1.0 + 0.3 * r)
                elif p.dim() == 2:
                    p.copy_(r / p.shape[1] ** 0.5)
                else:
                    p.copy_(0.3 * r)


def build_module(a, ref, torch):
    E, H = a.embed_dim, a.num_heads
    if a.module == "self_attention":
        return ref.SingleHeadSelfAttention(E)
    if a.module == "talking_heads":
        return ref.TalkingHeadAttn(E, H, qkv_bias=a.qkv_bias)
    if a.module == "attention_block":
        return ref.AttentionBlock(E, H)
    if a.module == "transformer_encoder":
        return ref.MobileViTTransformerEncoder(E, a.ffn_dim, H)
    if a.module in ("transformer_encoder_layer", "transformer_decoder_layer"):
        encoder = a.module == "transformer_encoder_layer"
        cls = torch.nn.TransformerEncoderLayer if encoder else torch.nn.TransformerDecoderLayer
        return cls(E, H, a.ffn_dim, dropout=0.0, activation=a.activation or "relu", batch_first=True,
                   norm_first=a.norm_first)
    if a.module == "gqa_attention":
        m = ref.LlamaAttention(E, H, a.num_kv_heads, a.head_dim, qkv_bias=a.qkv_bias, rope=not a.no_rope,
                               rotary_dim=a.rotary_dim, rope_theta=a.rope_theta or 10000.0,
                               interleaved=a.rope_interleaved, sliding_window=a.sliding_window,
                               attn_logit_softcapping=a.softcap, sinks=a.sinks)
        m.kv_store = ref.kv_store(a.kv_cache_dtype) if a.kv_cache_dtype else None
        return m
    if a.layout == "separate":
        return ref.SeparateProjectionMultiHeadAttention(E, H)
    if a.layout == "mobilevit":
        return ref.MobileViTAttention(E, H, bias=not a.no_bias)
    return torch.nn.MultiheadAttention(E, H, bias=not a.no_bias, add_bias_kv=a.add_bias_kv,
                                       add_zero_attn=a.add_zero_attn, kdim=a.kdim, vdim=a.vdim, batch_first=True)


def draw_masks(a, torch, B, H, L, S, dtype):
    """key_padding_mask (B, S) and attn_mask (L, S) or (B*H, L, S) as asked, bool (~30% True)
    or float (uniform, ~10% -inf); then keys are unmasked until no row is fully masked."""
    def draw(kind, shape, lo, hi):
        if kind == "bool":
            return torch.rand(shape) < 0.3
        m = torch.rand(shape, dtype=dtype) * (hi - lo) + lo
        return m.masked_fill(torch.rand(shape) < 0.1, float("-inf"))

    kpm = draw(a.key_padding_mask, (B, S), -2, 2) if a.key_padding_mask else None
    am = None
    if a.attn_mask:
        kind, dims = a.attn_mask[:-2], a.attn_mask[-2:]
        am = draw(kind, (L, S) if dims == "2d" else (B * H, L, S), -3, 3)

    def blocked(m):
        return m if m.dtype == torch.bool else torch.isneginf(m)

    while True:
        bl = torch.zeros(B, H, L, S, dtype=torch.bool)
        if kpm is not None:
            bl |= blocked(kpm)[:, None, None, :]
        if am is not None:
            bl |= blocked(am).reshape(1, 1, L, S) if am.dim() == 2 else blocked(am).reshape(B, H, L, S)
        full = bl.all(-1).nonzero().tolist()
        if not full:
            return kpm, am
        b, h, l = full[0]
        c = (b + h + l) % S
        free = False if kpm is None or kpm.dtype == torch.bool else 0.0
        if kpm is not None:
            kpm[b, c] = free
        if am is not None:
            free = False if am.dtype == torch.bool else 0.0
            if am.dim() == 2:
                am[l, c] = free
            else:
                am[b * H + h, l, c] = free


def check_args(a, p):
    given = {k for k, v in vars(a).items() if v not in (None, False)}
    for flag in ("num_heads", "kdim", "vdim", "ffn_dim", "qkv_bias", "no_bias", "add_bias_kv", "add_zero_attn",
                 "layout", "source_length", "key_padding_mask", "attn_mask", "need_weights", "per_head_weights",
                 *(f for f, _ in PASSED_ON)):
        if flag in given and flag not in MODULE_FLAGS[a.module]:
            p.error(f"--{flag.replace('_', '-')} does not apply to --module {a.module}")
    for flag in REQUIRED.get(a.module, ()):
        if flag not in given:
            p.error(f"--module {a.module} needs --{flag.replace('_', '-')}")
    if a.num_heads is None:
        a.num_heads = 8 if a.module in ("talking_heads", "transformer_encoder") else 1
    if a.embed_dim % a.num_heads and a.head_dim is None:
        p.error(f"--num-heads {a.num_heads} does not divide --embed-dim {a.embed_dim}")
    if a.module == "gqa_attention" and a.key_padding_mask == "float":
        p.error("--key-padding-mask float: LlamaAttention takes a bool key padding mask")
    if a.kv_cache_dtype and not a.incremental:
        p.error("--kv-cache-dtype needs --incremental (the cache is what it stores)")
    if a.page_size and not a.incremental:
        p.error("--page-size needs --incremental (it pages the KV cache)")
    if a.module == "gqa_attention" and a.num_heads % a.num_kv_heads:
        p.error(f"--num-heads {a.num_heads} is not a multiple of --num-kv-heads {a.num_kv_heads}")
    if a.no_rope and (a.rope_theta or a.rotary_dim or a.rope_interleaved):
        p.error("--no-rope excludes --rope-theta, --rotary-dim and --rope-interleaved")
    a.need_weights = a.need_weights or a.per_head_weights
    if a.module == "multi_head_attention":
        a.layout = a.layout or "torch"
        if a.layout != "torch":
            for flag in ("kdim", "vdim", "add_bias_kv", "add_zero_attn", "key_padding_mask", "attn_mask", "need_weights"):
                if flag in given or (flag == "need_weights" and a.need_weights):
                    p.error(f"--{flag.replace('_', '-')} needs --layout torch (the {a.layout} layer does not have it)")
            if a.layout == "separate" and a.no_bias:
                p.error("--no-bias: SeparateProjectionMultiHeadAttention always has biases")
            if a.layout == "mobilevit" and a.source_length is not None:
                p.error("--source-length: MobileViTAttention is self-attention only")
        if (a.causal or a.incremental) and (a.layout != "torch" or a.source_length is not None or a.kdim or a.vdim
                                            or a.attn_mask or a.add_bias_kv or a.add_zero_attn):
            p.error("--causal / --incremental: self-attention with --layout torch, no --attn-mask, "
                    "--add-bias-kv or --add-zero-attn")
        if a.incremental and not a.causal:
            p.error("--incremental: multi_head_attention decodes causally; give --causal")
        if a.key_padding_mask == "float" and (a.attn_mask or a.causal):
            p.error("a float --key-padding-mask with an --attn-mask or --causal: PyTorch 1.13 ORs them (any "
                    "nonzero float masks), PyTorch >= 2.0 and attn add them; give one of them only")


def export(a, torch, ref):
    import numpy as np
    dtype = {"float32": torch.float32, "float64": torch.float64}[a.dtype]
    torch.manual_seed(a.seed)
    module = build_module(a, ref, torch)

    checkpoint = None
    if a.state_dict:
        loaded = torch.load(a.state_dict, map_location="cpu")
        checkpoint = loaded.state_dict() if isinstance(loaded, torch.nn.Module) else loaded
        if not isinstance(checkpoint, dict):
            sys.exit(f"export_weights: {a.state_dict} holds a {type(checkpoint).__name__}, not a state_dict")
        prefix = a.prefix or ""
        mine = {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix) and torch.is_tensor(v)}
        module.load_state_dict(mine, strict=True)
    else:
        reinit(module, torch)
    module = module.to(dtype).eval()

    B, L, E = a.batch, a.length, a.embed_dim
    inputs, call = {}, None
    if a.module == "multi_head_attention":
        cross = a.source_length is not None or a.kdim is not None or a.vdim is not None
        S = a.source_length if a.source_length is not None else L
        query = torch.randn(B, L, E, dtype=dtype)
        if cross:
            key = torch.randn(B, S, a.kdim or E, dtype=dtype)
            value = key if a.vdim == a.kdim else torch.randn(B, S, a.vdim or E, dtype=dtype)
        else:
            key = value = query
        inputs = {"query": query, "key": key, "value": value}
        if a.layout == "torch":
            kpm, am = draw_masks(a, torch, B, a.num_heads, L, S, dtype)
            if kpm is not None:
                inputs["key_padding_mask"] = kpm
            if am is not None:
                inputs["attn_mask"] = am
            if a.causal:  # attn_run --causal masks by itself: not an input
                am = torch.ones(L, L, dtype=torch.bool).triu(1)
            kw = dict(key_padding_mask=kpm, attn_mask=am, need_weights=a.need_weights,
                      average_attn_weights=not a.per_head_weights)
            call = lambda: module(query, key, value, **kw)  # noqa: E731
        elif a.layout == "separate":
            call = lambda: (module(query, key, value), None)  # noqa: E731
        else:
            call = lambda: (module(query), None)  # noqa: E731
    elif a.module == "transformer_decoder_layer":
        tgt, memory = torch.randn(B, L, E, dtype=dtype), torch.randn(B, a.source_length or L, E, dtype=dtype)
        inputs = {"tgt": tgt, "memory": memory}
        causal = torch.ones(L, L, dtype=torch.bool).triu(1)  # True = masked: attn_run's decoder is causal
        call = lambda: (module(tgt, memory, tgt_mask=causal), None)  # noqa: E731
    elif a.module == "gqa_attention":
        x = torch.randn(B, L, E, dtype=dtype)
        kpm = draw_masks(a, torch, B, a.num_heads, L, L, dtype)[0]
        inputs = {"x": x, **({"key_padding_mask": kpm} if kpm is not None else {})}
        call = lambda: (module(x, key_padding_mask=kpm), None)  # noqa: E731
    else:
        x = torch.randn((B, E, L) if a.module == "attention_block" else (B, L, E), dtype=dtype)
        inputs = {"x": x}
        call = lambda: (module(x), None)  # noqa: E731

    output, weights = call()  # autograd on: nn.MultiheadAttention's reference path
    expected = {"output": output}
    if a.need_weights:
        expected["attn_weights"] = weights
    for name, t in expected.items():
        if not torch.isfinite(t).all():
            sys.exit(f"export_weights: PyTorch's {name} is not finite")

    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def arrays(d):
        return {k: v.detach().cpu().numpy() for k, v in d.items()}

    if checkpoint is not None:
        weights_np = {}
        for k, v in checkpoint.items():
            if torch.is_tensor(v) and v.is_floating_point():
                v = v.detach().cpu()
                weights_np[k] = (v if v.dtype in (torch.float32, torch.float64) else v.float()).numpy()
    else:
        prefix = a.prefix or ""
        weights_np = {prefix + k: v for k, v in arrays(module.state_dict()).items()}
        if prefix:  # a bigger checkpoint: another module's tensors that attn_run must skip
            for k, v in arrays(module.state_dict()).items():
                weights_np.setdefault("unrelated." + k, np.asarray(v) + 1)
    write_safetensors(out / "weights.safetensors", weights_np)
    write_safetensors(out / "inputs.safetensors", arrays(inputs))
    write_safetensors(out / "expected.safetensors", arrays(expected),
                      {"tolerance": str(KV_TOLERANCE[a.kv_cache_dtype])} if a.kv_cache_dtype else None)
    return attn_run_command(a, out)


def shown(path):
    """path relative to the current directory when it is below it."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path)
    if rel.startswith(".."):
        return path
    return rel if os.sep in rel else os.path.join(".", rel)  # ./attn_run, not a PATH lookup


def attn_run_command(a, out):
    cmd = [shown(a.attn_run), "--module", a.module, "--embed-dim", str(a.embed_dim)]
    if "num_heads" in MODULE_FLAGS[a.module]:
        cmd += ["--num-heads", str(a.num_heads)]
    for flag in ("kdim", "vdim", "ffn_dim"):
        if getattr(a, flag) is not None:
            cmd += ["--" + flag.replace("_", "-"), str(getattr(a, flag))]
    for flag in ("qkv_bias", "no_bias", "add_bias_kv", "add_zero_attn"):
        if getattr(a, flag):
            cmd.append("--" + flag.replace("_", "-"))
    for flag, takes_value in PASSED_ON:
        value = getattr(a, flag)
        if value not in (None, False):
            cmd += ["--" + flag.replace("_", "-")] + ([str(value)] if takes_value else [])
    cmd += ["--weights", str(out / "weights.safetensors")]
    if a.prefix:
        cmd += ["--prefix", a.prefix]
    cmd += ["--inputs", str(out / "inputs.safetensors"), "--output", str(out / "output.safetensors")]
    if a.per_head_weights:
        cmd.append("--per-head-weights")
    elif a.need_weights:
        cmd.append("--need-weights")
    return cmd


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", metavar="DIR", help="compare DIR/output.safetensors with DIR/expected.safetensors")
    p.add_argument("--module", choices=MODULES)
    p.add_argument("--embed-dim", type=int)
    p.add_argument("--num-heads", type=int, help="default 8 for talking_heads and transformer_encoder")
    p.add_argument("--kdim", type=int)
    p.add_argument("--vdim", type=int)
    p.add_argument("--ffn-dim", type=int)
    p.add_argument("--qkv-bias", action="store_true")
    p.add_argument("--num-kv-heads", type=int, help="gqa_attention: key/value heads K")
    p.add_argument("--head-dim", type=int, help="gqa_attention: head dim (default E / H)")
    p.add_argument("--rope-theta", type=float, help="gqa_attention: rotary base (default 10000)")
    p.add_argument("--no-rope", action="store_true", help="gqa_attention: no rotary embedding")
    p.add_argument("--rotary-dim", type=int, help="gqa_attention: rotate the first R dims only")
    p.add_argument("--rope-interleaved", action="store_true", help="gqa_attention: GPT-J pairs (2i, 2i+1)")
    p.add_argument("--sliding-window", type=int, help="gqa_attention: Mistral's sliding window W")
    p.add_argument("--softcap", type=float, help="gqa_attention: logit softcap c")
    p.add_argument("--sinks", action="store_true",
                   help="gqa_attention: gpt-oss attention sinks (a parameter sinks, one logit per head)")
    p.add_argument("--activation", choices=("relu", "gelu"), help="transformer_*_layer: default relu")
    p.add_argument("--norm-first", action="store_true", help="transformer_*_layer: pre-norm")
    p.add_argument("--incremental", type=int, metavar="C",
                   help="gqa_attention, transformer_decoder_layer, multi_head_attention --causal: attn_run "
                        "decodes C tokens at a time")
    p.add_argument("--page-size", type=int, metavar="P",
                   help="with --incremental: attn_run's KV cache is paged in pages of P positions")
    p.add_argument("--kv-cache-dtype", choices=("bfloat16", "float16", "int8"),
                   help="gqa_attention --incremental: attn_run's KV cache stores keys and values in this type, "
                        "and PyTorch's reference rounds or quantises them the same way (kv_store)")
    p.add_argument("--causal", action="store_true", help="multi_head_attention: causal self-attention")
    p.add_argument("--no-bias", action="store_true")
    p.add_argument("--add-bias-kv", action="store_true")
    p.add_argument("--add-zero-attn", action="store_true")
    p.add_argument("--layout", choices=("torch", "separate", "mobilevit"),
                   help="multi_head_attention's PyTorch class (default torch)")
    p.add_argument("--batch", type=int, default=2, help="B (default 2)")
    p.add_argument("--length", type=int, default=7, help="L: sequence (query) length (default 7)")
    p.add_argument("--source-length", type=int, help="S: key/value length of multi_head_attention (default L)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--key-padding-mask", choices=("bool", "float"))
    p.add_argument("--attn-mask", choices=("bool2d", "bool3d", "float2d", "float3d"))
    p.add_argument("--need-weights", action="store_true")
    p.add_argument("--per-head-weights", action="store_true")
    p.add_argument("--state-dict", metavar="FILE", help="load these weights (torch.save file) instead of random ones")
    p.add_argument("--prefix", help="the module's name prefix in the weights, e.g. blocks.0.attn.")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed (default 0)")
    p.add_argument("--out-dir", help="where the three files go")
    p.add_argument("--attn-run", default=str(DEFAULT_ATTN_RUN), help="attn_run in the printed command (default %(default)s)")
    p.add_argument("--run", action="store_true", help="also run that command and compare (exit 1 if they differ)")
    a = p.parse_args(argv)

    if a.compare:
        return compare(a.compare)
    if a.module is None or a.embed_dim is None or a.out_dir is None:
        p.error("--module, --embed-dim and --out-dir are required (or --compare DIR)")
    for flag in ("embed_dim", "num_heads", "kdim", "vdim", "ffn_dim", "batch", "length", "source_length",
                 "num_kv_heads", "head_dim", "rotary_dim", "sliding_window", "incremental"):
        if getattr(a, flag) is not None and getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be positive")
    check_args(a, p)

    try:
        import numpy  # noqa: F401
        import torch
    except ImportError as e:
        sys.exit(f"export_weights: needs PyTorch and NumPy ({e}); on Debian: apt-get install python3-torch python3-numpy")
    sys.path.insert(0, str(HERE))
    import torch_reference  # examples/torch_reference.py, next to this file

    cmd = export(a, torch, torch_reference)
    line = shlex.join(cmd) + " && " + shlex.join([sys.executable, shown(__file__), "--compare", a.out_dir])
    print(f"wrote {a.out_dir}/weights.safetensors, inputs.safetensors, expected.safetensors; check attn with:")
    print(line)
    if not a.run:
        return 0
    sys.stdout.flush()
    r = subprocess.run(cmd)
    if r.returncode != 0:
        print(f"attn_run failed (exit status {r.returncode})")
        return 1
    return compare(a.out_dir)


if __name__ == "__main__":
    sys.exit(main())
