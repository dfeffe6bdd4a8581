#!/usr/bin/python3
"""Generate the PyTorch reference values the C++ tests of `attn` compare against.

Run with Debian's PyTorch (1.13):

    /usr/bin/python3 tests/reference/make_reference.py            # (re)write every case, then check
    /usr/bin/python3 tests/reference/make_reference.py mha_self_e128_f32 ops_f64   # only these cases
    /usr/bin/python3 tests/reference/make_reference.py --check    # only read back and verify the files

Each case is written to tests/reference/data/<case>.safetensors (format, tensor
names and metadata keys: see README.md next to this file).  Every case uses its
own fixed seed (CRC-32 of its name, or the number the case table gives) and runs
single-threaded, so the output is reproducible and independent of which cases are
generated together.

The PyTorch modules attn reproduces are defined in examples/torch_reference.py (imported
by its path in this repository); nn.MultiheadAttention is PyTorch's own.
"""
import argparse
import copy
import hashlib
import json
import math
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

SKIP = 77  # ctest's SKIP_RETURN_CODE for reference_fixtures_fresh
try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as _e:
    if __name__ == "__main__" and "--verify" in sys.argv:
        print(f"SKIPPED: {sys.executable} cannot import PyTorch/NumPy ({_e}); install python3-torch "
              "python3-numpy to check that the reference files are fresh")
        sys.exit(SKIP)
    raise

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "data"
MODULES_FILE = HERE.parents[1] / "examples" / "torch_reference.py"
sys.path.insert(0, str(MODULES_FILE.parent))
import torch_reference as ref  # noqa: E402  (examples/torch_reference.py of this repository)

DTYPES = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16}
DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16"}
ST_DTYPES = {torch.float32: ("F32", "<f4"), torch.float64: ("F64", "<f8"), torch.bool: ("BOOL", "|u1"),
             torch.float16: ("F16", "<f2"), torch.bfloat16: ("BF16", "<u2"), torch.uint8: ("U8", "|u1"),
             torch.int32: ("I32", "<i4"), torch.int64: ("I64", "<i8")}
ST_NUMPY = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "BOOL": np.dtype("u1"), "F16": np.dtype("<f2"),
            "BF16": np.dtype("<u2"), "U8": np.dtype("u1"), "I32": np.dtype("<i4"), "I64": np.dtype("<i8")}

# ----------------------------------------------------------------------------
# safetensors, written and read by hand
# ----------------------------------------------------------------------------

def write_safetensors(path: Path, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> None:
    """8-byte LE header length N (multiple of 8), N bytes of JSON, then the packed data.

    Tensors are stored in the given order except that 8-byte and 4-byte types come
    before BOOL ones, so every float tensor starts on an aligned offset."""
    order = sorted(tensors, key=lambda k: -tensors[k].element_size())  # stable sort
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    blobs, offset = [], 0
    for name in order:
        t = tensors[name].detach().contiguous()
        st_dtype, np_dtype = ST_DTYPES[t.dtype]
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: store the raw bits
            t = t.view(torch.int16)
        blob = t.numpy().astype(np_dtype, copy=False).tobytes()
        header[name] = {"dtype": st_dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path: Path):
    """Parse a file and verify its structure; returns (metadata, {name: numpy array})."""
    raw = path.read_bytes()
    assert len(raw) >= 8, "file too short"
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0, f"header length {n} is not a multiple of 8"
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    metadata = header.pop("__metadata__")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()), "metadata must be str->str"
    arrays, expected_begin = {}, 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = info["data_offsets"]
        assert begin == expected_begin, f"{name}: gap or overlap at offset {begin}"
        dt = ST_NUMPY[info["dtype"]]
        count = int(np.prod(info["shape"], dtype=np.int64))
        assert end - begin == count * dt.itemsize, f"{name}: {end - begin} bytes for shape {info['shape']}"
        arrays[name] = np.frombuffer(data, dtype=dt, count=count, offset=begin).reshape(info["shape"])
        expected_begin = end
    assert expected_begin == len(data), f"{len(data) - expected_begin} trailing bytes"
    return metadata, arrays


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------

def s(value) -> str:
    """Metadata value as a string (bools as true/false)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def reinit(module: nn.Module) -> nn.Module:
    """Random non-trivial parameters, so that zero-initialised biases are exercised.

    Matrices: randn / sqrt(fan_in) (keeps logits O(1) so softmax is not one-hot);
    LayerNorm weights: 1 + 0.3 randn; everything else (biases, bias_k/bias_v): 0.3 randn."""
    with torch.no_grad():
        for mod in module.modules():
            for name, p in mod.named_parameters(recurse=False):
                r = torch.randn(p.shape, dtype=p.dtype)
                if isinstance(mod, nn.LayerNorm) and name == "weight":
                    p.copy_(1.0 + 0.3 * r)
                elif p.dim() == 2:
                    p.copy_(r / math.sqrt(p.shape[1]))
                else:
                    p.copy_(0.3 * r)
    return module.eval()


def params(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {f"param.{k}": v for k, v in module.state_dict().items()}


def make_bool_mask(shape, p=0.3) -> torch.Tensor:
    return torch.rand(shape) < p


def make_float_mask(shape, dtype, lo, hi, p_inf) -> torch.Tensor:
    m = (torch.rand(shape, dtype=dtype) * (hi - lo) + lo)
    return m.masked_fill(torch.rand(shape) < p_inf, float("-inf"))


def make_kpm(kind, B, S, dtype) -> Optional[torch.Tensor]:
    """key_padding_mask (B, S): None, "bool" (~30% True) or "float" (in [-2, 2], ~10% -inf)."""
    if kind is None:
        return None
    return make_bool_mask((B, S)) if kind == "bool" else make_float_mask((B, S), dtype, -2, 2, 0.1)


def make_attn_mask(kind, B, H, L, S, dtype, p_inf=0.15) -> Optional[torch.Tensor]:
    """attn_mask: None or "bool2d" / "bool3d" (~30% True) / "float2d" / "float3d" (in [-3, 3],
    a fraction p_inf of -inf); 2d = (L, S), 3d = (B*H, L, S)."""
    if kind is None:
        return None
    shape = (L, S) if kind.endswith("2d") else (B * H, L, S)
    return make_bool_mask(shape) if kind.startswith("bool") else make_float_mask(shape, dtype, -3, 3, p_inf)


def blocked(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Where a (bool or float) mask forbids attention."""
    if mask is None:
        return None
    return mask if mask.dtype == torch.bool else torch.isneginf(mask)


def additive_bias(kpm, attn_mask, B, H, L, S, dtype) -> torch.Tensor:
    """(B, H, L, S) additive logit bias from a key_padding_mask (B, S) and an attn_mask
    (L, S) or (B*H, L, S); bool entries True -> -inf, float entries are added."""
    bias = torch.zeros(B, H, L, S, dtype=dtype)
    am_view = (1, 1, L, S) if attn_mask is not None and attn_mask.dim() == 2 else (B, H, L, S)
    for m, view in ((kpm, (B, 1, 1, S)), (attn_mask, am_view)):
        if m is None:
            continue
        m = m.reshape(view)
        bias = bias.masked_fill(m, float("-inf")) if m.dtype == torch.bool else bias + m
    return bias


def causal_mask(causal, L, S) -> Optional[torch.Tensor]:
    """(L, S) bool, True = masked: above the diagonal (top_left, PyTorch's is_causal) or above
    the diagonal aligned to the last key (bottom_right); None for "none"."""
    if causal == "none":
        return None
    return ref.causal_window_mask(L, S, causal)


def with_causal(attn_mask, causal, L, S):
    """attn_mask with the causal mask merged in (bool: OR; float: -inf where future)."""
    cm = causal_mask(causal, L, S)
    if cm is None:
        return attn_mask
    if attn_mask is None:
        return cm
    return attn_mask | cm if attn_mask.dtype == torch.bool else attn_mask.masked_fill(cm, float("-inf"))


def fully_masked_rows(kpm, attn_mask, B, H, L, S, causal="none") -> torch.Tensor:
    """(B, H, L) bool: rows whose every key is blocked."""
    am = with_causal(blocked(attn_mask), causal, L, S)
    return torch.isneginf(additive_bias(blocked(kpm), am, B, H, L, S, torch.float64)).all(-1)


def draw_masks(draw: Callable[[], tuple], B, H, L, S, expect_rows=None, need_inf=True, tries=1000,
               causal="none") -> tuple:
    """Call draw() -> (key_padding_mask, attn_mask) until the fully masked (batch, head, row)
    are exactly expect_rows (default: those of the causal mask alone) and, if need_inf, every
    float mask has some -inf. Deterministic: the RNG just advances."""
    expect = fully_masked_rows(None, None, B, H, L, S, causal) if expect_rows is None else expect_rows
    for _ in range(tries):
        masks = draw()
        if torch.equal(fully_masked_rows(*masks, B, H, L, S, causal), expect) and not (need_inf and any(
                m is not None and m.is_floating_point() and not torch.isneginf(m).any() for m in masks)):
            return masks
    raise RuntimeError("could not draw acceptable masks")


def draw_case_masks(B, H, L, S, dtype, kpm=None, mask=None, causal="none", full_rows=(), full_batches=(),
                    p_inf=0.15, need_inf=True):
    """(key_padding_mask, attn_mask, fully masked (B, H, L) rows) for a case: kpm and mask kinds
    as make_kpm / make_attn_mask; the bool key_padding_mask of every batch in full_batches and
    every attn_mask row in full_rows fully masked (True, or -inf in a float mask); no other
    fully masked row but those of the causal mask. (None, None, rows) without masks."""
    expect = fully_masked_rows(None, None, B, H, L, S, causal)
    for b in full_batches:
        expect[b] = True
    for r in full_rows:
        expect[:, :, r] = True
    if kpm is None and mask is None:
        return None, None, expect

    def draw():
        kp, am = make_kpm(kpm, B, S, dtype), make_attn_mask(mask, B, H, L, S, dtype, p_inf)
        for b in full_batches:
            kp[b, :] = True
        for r in full_rows:
            am[..., r, :] = True if am.dtype == torch.bool else float("-inf")
        return kp, am

    kp, am = draw_masks(draw, B, H, L, S, expect, need_inf=need_inf, causal=causal)
    return kp, am, expect


def bias_of(kpm, attn_mask, causal, B, H, L, S, dtype) -> torch.Tensor:
    """(B, H, L, S) additive logit bias of the masks and the causal flag."""
    return additive_bias(kpm, with_causal(attn_mask, causal, L, S), B, H, L, S, dtype)


softmax_policy = ref.softmax_policy  # a fully masked row gets weights 0 (the library's policy)


def mask_tensors(kpm, attn_mask) -> Dict[str, torch.Tensor]:
    t = {}
    if kpm is not None:
        t["input.key_padding_mask"] = kpm
    if attn_mask is not None:
        t["input.attn_mask"] = attn_mask
    return t


def max_abs_diff(a, b) -> float:
    if a is None or b is None:
        return 0.0
    a, b = a.double(), b.double()
    both_nan = a.isnan() & b.isnan()
    assert torch.equal(a.isnan(), b.isnan()), "NaN pattern differs"
    return (a - b).masked_fill(both_nan, 0).abs().max().item()


# ----------------------------------------------------------------------------
# Case table
# ----------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    builder: Callable
    description: str
    kw: dict = field(default_factory=dict)
    seed: Optional[int] = None  # torch.manual_seed; default: CRC-32 of the name

    @property
    def dtype(self):
        return DTYPES[self.name.rsplit("_", 1)[1]]


CASES = []


def case(name, builder, description, seed=None, **kw):
    CASES.append(Case(name, builder, description, kw, seed))


# ----------------------------------------------------------------------------
# Builders: each returns (tensors, metadata) for one case, run under a fixed seed
# and torch.no_grad().
# ----------------------------------------------------------------------------

def build_self_attention(c: Case, shape, kpm=None, mask=None, causal="none", full_rows=()):
    """SingleHeadSelfAttention; with masks (the module takes none) the scores get the mask
    bias before softmax, fully masked rows softmax 0 (the library's policy)."""
    B, L, E = shape
    m = reinit(ref.SingleHeadSelfAttention(E).to(c.dtype))
    x = torch.randn(shape, dtype=c.dtype)
    meta = {"embed_dim": E, "causal": causal}
    if kpm is None and mask is None and causal == "none":
        return {**params(m), "input.x": x, "output.output": m(x)}, meta
    kp, am, _ = draw_case_masks(B, 1, L, L, c.dtype, kpm, mask, causal, full_rows)
    q, k, v = m.query(x), m.key(x), m.value(x)
    scores = q @ k.transpose(1, 2) / torch.sqrt(torch.tensor(E, dtype=torch.float32))
    w = softmax_policy(scores + bias_of(kp, am, causal, B, 1, L, L, c.dtype)[:, 0])
    return {**params(m), "input.x": x, **mask_tensors(kp, am), "output.output": w @ v}, meta


# --- nn.MultiheadAttention ----------------------------------------------------

def torch_mha_functional(m: nn.MultiheadAttention, q, k, v, *, batched, **kw):
    """The slow (non-fast-path) computation of nn.MultiheadAttention, called directly."""
    if batched:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    sep = not m._qkv_same_embed_dim
    o, w = F.multi_head_attention_forward(
        q, k, v, m.embed_dim, m.num_heads, m.in_proj_weight, m.in_proj_bias, m.bias_k, m.bias_v,
        m.add_zero_attn, 0.0, m.out_proj.weight, m.out_proj.bias, training=False,
        use_separate_proj_weight=sep, q_proj_weight=m.q_proj_weight, k_proj_weight=m.k_proj_weight,
        v_proj_weight=m.v_proj_weight, **kw)
    return (o.transpose(0, 1) if batched else o), w


def run_torch_mha(name, m, q, k, v, **kw):
    """Reference = the module's own forward; cross-checked against the functional slow
    path.  Where PyTorch 1.13's module forward fails (bias=False on the fast path),
    the functional slow path is the reference."""
    batched = q.dim() == 3
    o_f, w_f = torch_mha_functional(m, q, k, v, batched=batched, **kw)
    try:
        o, w = m(q, k, v, **kw)
    except (RuntimeError, TypeError) as e:
        if m.in_proj_bias is not None:
            raise
        print(f"  {name}: nn.MultiheadAttention.forward failed ({str(e).splitlines()[0]}); "
              f"using F.multi_head_attention_forward")
        return o_f, w_f
    tol = 1e-5 if q.dtype == torch.float32 else 1e-12
    d = max(max_abs_diff(o, o_f), max_abs_diff(w, w_f))
    scale = max(1.0, o_f.nan_to_num().abs().max().item())
    assert d <= tol * scale, f"{name}: module forward and functional path differ by {d}"
    if d:
        print(f"  {name}: module forward vs functional path: max |diff| = {d:.3g}")
    return o, w


def max_scaled_logit(m: nn.MultiheadAttention, q, k) -> float:
    """max |q/sqrt(head_dim) @ k^T| over batch and heads, computed in float64."""
    E, H = m.embed_dim, m.num_heads
    W = m.in_proj_weight.double()
    b = m.in_proj_bias.double() if m.in_proj_bias is not None else torch.zeros(3 * E, dtype=torch.float64)
    qp = (q.double() @ W[:E].T + b[:E]).unflatten(-1, (H, E // H)).transpose(-3, -2)
    kp = (k.double() @ W[E:2 * E].T + b[E:2 * E]).unflatten(-1, (H, E // H)).transpose(-3, -2)
    return (qp / math.sqrt(E // H) @ kp.transpose(-1, -2)).abs().max().item()


def build_mha_torch(c: Case, B, L, E, H, S=None, kdim=None, vdim=None, inputs="self",
                    need_weights=True, average=True, kpm=None, mask=None, causal="none",
                    bias=True, add_bias_kv=False, add_zero_attn=False, large_logits=None,
                    unbatched=False, full_rows=(), full_batches=()):
    """nn.MultiheadAttention(batch_first=True).

    inputs: "self" (query is key is value), "kv" (key is value), "cross" (all distinct).
    kpm: None | "bool" | "float";  mask: None | "bool2d" | "bool3d" | "float2d" | "float3d".
    causal: the reference merges the causal bool mask into attn_mask; it is NOT stored.
    large_logits: target max |scaled logit|, reached by scaling the q and k in-projection.
    full_rows / full_batches: attn_mask rows / key_padding_mask batches fully masked; rows
    that see no key (these, and the first L - S of bottom_right causal) follow the policy."""
    dt = c.dtype
    S = L if S is None else S
    kdim, vdim = kdim or E, vdim or E
    m = nn.MultiheadAttention(E, H, dropout=0.0, bias=bias, add_bias_kv=add_bias_kv,
                              add_zero_attn=add_zero_attn, kdim=kdim, vdim=vdim, batch_first=True)
    m = reinit(m.to(dt))
    lead = () if unbatched else (B,)
    query = torch.randn(*lead, L, E, dtype=dt)
    if inputs == "self":
        key = value = query
    elif inputs == "kv":
        key = value = torch.randn(*lead, S, kdim, dtype=dt)
    else:
        key, value = torch.randn(*lead, S, kdim, dtype=dt), torch.randn(*lead, S, vdim, dtype=dt)

    key_padding_mask, attn_mask, rows = draw_case_masks(B, H, L, S, dt, kpm, mask, causal, full_rows, full_batches)

    meta = {}
    if large_logits:
        # The factor is rounded (6 digits), so that the parameters do not depend on the last
        # bits of a float64 matmul (BLAS kernels differ between CPUs).
        a = float(f"{math.sqrt(large_logits / max_scaled_logit(m, query, key)):.6g}")
        m.in_proj_weight[:2 * E] *= a
        if m.in_proj_bias is not None:
            m.in_proj_bias[:2 * E] *= a
        meta["max_abs_logit"] = f"{max_scaled_logit(m, query, key):.4g}"
        med = median_max_weight(m, query, key, bias_of(key_padding_mask, attn_mask, causal, B, H, L, S, torch.float64))
        assert large_logits >= 1000 or med < 0.95, f"{c.name}: softmax too close to one-hot ({med})"
        meta["median_max_weight"] = f"{med:.3g}"

    torch_mask = with_causal(attn_mask, causal, L, S)
    kw = dict(key_padding_mask=key_padding_mask, attn_mask=torch_mask,
              need_weights=need_weights, average_attn_weights=average)
    out, weights = run_torch_mha(c.name, m, query, key, value, **kw)

    if kpm == "float" and mask is None:
        # PyTorch 1.13 accepts a float key_padding_mask (slow path: added to the logits).
        # Cross-check against the equivalent float attn_mask (B*H, L, S).
        eq = key_padding_mask[:, None, None, :].expand(B, H, L, S).reshape(B * H, L, S)
        o2, w2 = run_torch_mha(c.name + "[as attn_mask]", m, query, key, value,
                               **{**kw, "key_padding_mask": None, "attn_mask": eq})
        assert max(max_abs_diff(out, o2), max_abs_diff(weights, w2)) <= 1e-12, c.name

    if large_logits and dt == torch.float32:
        m64 = copy.deepcopy(m).double()
        o64, w64 = run_torch_mha(c.name + "[f64]", m64, *(t.double() for t in (query, key, value)), **kw)
        print(f"  {c.name}: float32 vs float64 PyTorch: max |diff| output {max_abs_diff(out, o64):.3g}"
              f" (max |output| {o64.abs().max().item():.3g}), weights {max_abs_diff(weights, w64):.3g}")

    if rows.any():
        out, weights = apply_fully_masked_policy(m, out, weights, rows, average)
    assert not out.isnan().any() and (weights is None or not weights.isnan().any()), c.name

    tensors = {**params(m), "input.query": query, "input.key": key, "input.value": value,
               **mask_tensors(key_padding_mask, attn_mask)}
    tensors["output.output"] = out
    if need_weights:
        tensors["output.attn_weights"] = weights
    meta.update(mha_meta(E, H, kdim, vdim, bias, add_bias_kv, add_zero_attn, "torch", need_weights, average, causal))
    return tensors, meta


def apply_fully_masked_policy(m, out, weights, rows, average):
    """PyTorch 1.13 gives NaN for a row whose keys are all masked.  Library policy (as
    PyTorch >= 2.5 SDPA and ONNX): such a row has weights 0, so its attention output is 0
    and the MHA output row is exactly out_proj.bias.  rows: the fully masked (B, H, L).
    Check that the NaNs are exactly there, then replace them."""
    out_rows = rows.all(1)                                          # (B, L): every head masked
    assert torch.equal(rows.any(1), out_rows), "a row masked for some heads only"
    if weights is not None:
        w_rows = out_rows if average else rows
        assert torch.equal(weights.isnan(), w_rows[..., None].expand_as(weights)), "NaN weights not where expected"
        weights = weights.masked_fill(w_rows[..., None], 0.0)
    assert torch.equal(out.isnan(), out_rows[..., None].expand_as(out)), "NaN outputs not where expected"
    out = torch.where(out_rows[..., None], m.out_proj.bias.expand_as(out), out)
    return out, weights


def median_max_weight(m: nn.MultiheadAttention, q, k, bias) -> float:
    """Median over (batch, head, row) of the row's largest softmax weight, in float64 (1 for
    one-hot rows); bias: the (B, H, L, S) mask bias."""
    E, H = m.embed_dim, m.num_heads
    W = m.in_proj_weight.double()
    b = m.in_proj_bias.double() if m.in_proj_bias is not None else torch.zeros(3 * E, dtype=torch.float64)
    qp = (q.double() @ W[:E].T + b[:E]).unflatten(-1, (H, E // H)).transpose(-3, -2)
    kp = (k.double() @ W[E:2 * E].T + b[E:2 * E]).unflatten(-1, (H, E // H)).transpose(-3, -2)
    w = softmax_policy(qp / math.sqrt(E // H) @ kp.transpose(-1, -2) + bias)
    return w.max(-1).values.median().item()


def mha_meta(E, H, kdim, vdim, bias, add_bias_kv, add_zero_attn, layout, need_weights, average, causal):
    return {"embed_dim": E, "num_heads": H, "kdim": kdim, "vdim": vdim, "bias": s(bias),
            "add_bias_kv": s(add_bias_kv), "add_zero_attn": s(add_zero_attn), "layout": layout,
            "need_weights": s(need_weights), "average_attn_weights": s(average), "causal": causal}


# --- the other MHA layouts ("separate" and "fused") ----------------------------

def build_mha_separate(c: Case, B, L, E, H, S=None):
    """SeparateProjectionMultiHeadAttention(query, key, value); cross when S is given (key is value)."""
    m = reinit(ref.SeparateProjectionMultiHeadAttention(E, H).to(c.dtype))
    query = torch.randn(B, L, E, dtype=c.dtype)
    key = value = query if S is None else torch.randn(B, S, E, dtype=c.dtype)
    out = m(query, key, value)
    tensors = {**params(m), "input.query": query, "input.key": key, "input.value": value, "output.output": out}
    return tensors, mha_meta(E, H, E, E, True, False, False, "separate", False, True, "none")


def build_mha_fused(c: Case, B, L, E, H):
    """MobileViTAttention (self-attention only)."""
    m = reinit(ref.MobileViTAttention(E, H, bias=True).to(c.dtype))
    x = torch.randn(B, L, E, dtype=c.dtype)
    out = m(x)
    tensors = {**params(m), "input.query": x, "input.key": x, "input.value": x, "output.output": out}
    return tensors, mha_meta(E, H, E, E, True, False, False, "fused", False, True, "none")


# --- talking heads -----------------------------------------------------------

def make_masked_th():
    class _Masked(ref.TalkingHeadAttn):
        """TalkingHeadAttn plus masks (timm's has none): the combined mask is applied
        to the logits after proj_l and before softmax (bool True -> -inf, float added);
        a fully masked row gets softmax 0 (nan_to_num right after softmax), then proj_w
        mixes as usual, so its bias shows up.  Mask head index = head after proj_l."""

        def forward(self, x, bias=None):
            """bias: additive, broadcastable to (B, H, N, N), indexed by the mixed head."""
            B, N, C = x.shape
            H = self.num_heads
            qkv = self.qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
            attn = q @ k.transpose(-2, -1)
            attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            if bias is not None:
                attn = attn + bias
            attn = attn.softmax(dim=-1)
            attn = torch.nan_to_num(attn, nan=0.0)
            attn = self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            attn = self.attn_drop(attn)
            x = (attn @ v).transpose(1, 2).reshape(B, N, C)
            return self.proj_drop(self.proj(x))
    return _Masked


def build_talking_heads(c: Case, shape, H, qkv_bias=False, kpm=None, mask=None, masked_row=None, causal="none",
                        p_inf=0.0):
    B, L, E = shape
    masked = kpm is not None or mask is not None or causal != "none"
    cls = make_masked_th() if masked else ref.TalkingHeadAttn
    m = reinit(cls(E, num_heads=H, qkv_bias=qkv_bias).to(c.dtype))
    x = torch.randn(shape, dtype=c.dtype)
    tensors = {**params(m), "input.x": x}
    meta = {"embed_dim": E, "num_heads": H, "qkv_bias": s(qkv_bias), "causal": causal}
    if not masked:
        tensors["output.output"] = m(x)
        return tensors, meta

    full_rows = () if masked_row is None else (masked_row,)
    key_padding_mask, attn_mask, _ = draw_case_masks(B, H, L, L, c.dtype, kpm, mask, causal, full_rows,
                                                     p_inf=p_inf, need_inf=p_inf > 0)
    # Without masks the subclass is timm's module, bit for bit.
    plain = ref.TalkingHeadAttn(E, num_heads=H, qkv_bias=qkv_bias).to(c.dtype).eval()
    plain.load_state_dict(m.state_dict())
    assert torch.equal(plain(x), m(x))
    out = m(x, bias_of(key_padding_mask, attn_mask, causal, B, H, L, L, c.dtype))
    assert not out.isnan().any()
    tensors.update(mask_tensors(key_padding_mask, attn_mask))
    tensors["output.output"] = out
    return tensors, meta


# --- attention block, encoder -------------------------------------------------

def build_attention_block(c: Case, shape, H, kpm=None, mask=None, causal="none", full_rows=(), full_batches=()):
    """AttentionBlock; with masks (the module takes none) they go to its nn.MultiheadAttention,
    as attn's AttentionBlock does, and a fully masked row's attention output is out_proj.bias."""
    N, C, L = shape
    m = reinit(ref.AttentionBlock(C, H).to(c.dtype))
    x = torch.randn(shape, dtype=c.dtype)
    meta = {"embed_dim": C, "num_heads": H, "causal": causal}
    if kpm is None and mask is None and causal == "none":
        return {**params(m), "input.x": x, "output.output": m(x)}, meta
    kp, am, rows = draw_case_masks(N, H, L, L, c.dtype, kpm, mask, causal, full_rows, full_batches)
    seq = x.permute(0, 2, 1)
    a, w = run_torch_mha(c.name, m.mha, seq, seq, seq, key_padding_mask=kp, attn_mask=with_causal(am, causal, L, L),
                         need_weights=False)
    if rows.any():
        a, _ = apply_fully_masked_policy(m.mha, a, None, rows, True)
    out = m.norm(seq + a).permute(0, 2, 1)
    assert not out.isnan().any()
    return {**params(m), "input.x": x, **mask_tensors(kp, am), "output.output": out}, meta


def masked_mobilevit_attention(att: ref.MobileViTAttention, x, bias):
    """MobileViTAttention.forward with an additive (B, H, L, S) bias on the logits (before
    softmax; fully masked rows softmax 0, the library's policy)."""
    b_sz, n_patches, _ = x.shape
    qkv = att.qkv_proj(x).reshape(b_sz, n_patches, 3, att.num_heads, -1).transpose(1, 3).contiguous()
    query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    w = softmax_policy(torch.matmul(query * att.scaling, key.transpose(-1, -2)) + bias)
    return att.out_proj(torch.matmul(w, value).transpose(1, 2).reshape(b_sz, n_patches, -1))


def build_encoder(c: Case, shape, ffn, H, kpm=None, mask=None, causal="none", full_rows=()):
    """MobileViTTransformerEncoder; with masks (the module takes none) its attention adds them
    to the logits, as attn's MobileViTEncoderLayer does."""
    B, L, E = shape
    m = reinit(ref.MobileViTTransformerEncoder(E, ffn, H).to(c.dtype))
    x = torch.randn(shape, dtype=c.dtype)
    meta = {"embed_dim": E, "num_heads": H, "ffn_dim": ffn, "causal": causal}
    if kpm is None and mask is None and causal == "none":
        return {**params(m), "input.x": x, "output.output": m(x)}, meta
    kp, am, _ = draw_case_masks(B, H, L, L, c.dtype, kpm, mask, causal, full_rows)
    norm, att, drop = m.pre_norm_mha
    y = x + drop(masked_mobilevit_attention(att, norm(x), bias_of(kp, am, causal, B, H, L, L, c.dtype)))
    out = y + m.pre_norm_ffn(y)
    assert not out.isnan().any()
    return {**params(m), "input.x": x, **mask_tensors(kp, am), "output.output": out}, meta


# --- stateless ops -------------------------------------------------------------

def build_ops(c: Case):
    dt, eps = c.dtype, 1e-5
    x = torch.randn(5, 7, dtype=dt) * 2
    weight, bias = torch.randn(6, 7, dtype=dt) / math.sqrt(7), 0.3 * torch.randn(6, dtype=dt)
    ln_weight, ln_bias = 1 + 0.3 * torch.randn(7, dtype=dt), 0.3 * torch.randn(7, dtype=dt)
    tensors = {
        "param.weight": weight, "param.bias": bias, "param.ln_weight": ln_weight, "param.ln_bias": ln_bias,
        "input.x": x,
        "output.linear": F.linear(x, weight, bias),
        "output.linear_nobias": F.linear(x, weight),
        "output.softmax": torch.softmax(x, -1),
        "output.layer_norm": F.layer_norm(x, (7,), ln_weight, ln_bias, eps),
        "output.silu": F.silu(x),
        "output.gelu": F.gelu(x),
        "output.gelu_tanh": F.gelu(x, approximate="tanh"),
    }
    return tensors, {"eps": "1e-05"}


def build_dtypes(c: Case):
    """Values in every safetensors dtype, converted by PyTorch, for the io round-trip tests."""
    special = [0.0, -0.0, 1.0, -2.5, 65504.0, 65520.0, 1e5, 6.1e-5, 5.96e-8, 2.98e-8, 3e-8, 1e-9, -7.0e-6,
               1.0009765625, 1.00048828125, 1.00146484375, 3.0e38, 1.00390625, 1.005859375, 1e-40]
    source = torch.cat([torch.tensor(special, dtype=torch.float32),
                        torch.randn(44, dtype=torch.float32) * torch.logspace(-8, 8, 44)]).reshape(4, 16)
    ints = torch.tensor([0, 1, -1, 7, 2**31 - 1, -2**31, 2**40, 0], dtype=torch.int64)
    tensors = {
        "input.source": source,
        "output.f16": source.half(), "output.f16_as_f32": source.half().float(),
        "output.bf16": source.bfloat16(), "output.bf16_as_f32": source.bfloat16().float(),
        "output.f64": source.double(),
        "input.i64": ints, "output.i32": ints[ints.abs() < 2**31].int(),
        "output.u8": torch.tensor([0, 1, 2, 255], dtype=torch.uint8),
        "output.bool": torch.tensor([True, False, True]),
    }
    return tensors, {}


def build_linear16(c: Case, shape, out_features, bias=True):
    """nn.Linear(shape[-1], out_features, bias) cast to the case's 16-bit dtype as a PyTorch
    user would (module.to(dtype)), on x drawn in float32 and rounded: output.torch is
    PyTorch's own 16-bit result, output.exact the float64 product of the same 16-bit values
    (the accuracy tests measure both against it)."""
    dt = c.dtype
    m = nn.Linear(shape[-1], out_features, bias=bias).to(dt)
    x = torch.randn(*shape).to(dt)
    exact = F.linear(x.double(), m.weight.double(), m.bias.double() if bias else None)
    return ({**params(m), "input.x": x, "output.torch": m(x), "output.exact": exact},
            {"in_features": shape[-1], "out_features": out_features, "bias": bias})


def build_sdpa16(c: Case, scale, shape, kpm=None, mask=None, causal="none"):
    """softmax(q * scale @ k^T + bias) @ v in the case's 16-bit dtype as PyTorch 1.13 computes it
    (nn.MultiheadAttention's order: q scaled first, each op rounding to the dtype): output.torch,
    with output.exact the same expression in float64 on the same 16-bit values. shape = (B, H,
    L, S, D, Dv); causal is merged into the bias (not stored; the test passes the flag)."""
    dt = c.dtype
    B, H, L, S, d, dv = shape
    q, k, v = (torch.randn(B, H, n, e).to(dt) for n, e in ((L, d), (S, d), (S, dv)))
    kp, am = draw_masks(lambda: (make_kpm(kpm, B, S, dt), make_attn_mask(mask, B, H, L, S, dt)), B, H, L, S,
                        causal=causal)
    cm = causal_mask(causal, L, S)

    def attend(q, k, v, dtype):
        bias = additive_bias(kp, am, B, H, L, S, dtype)
        if cm is not None:
            bias = bias.masked_fill(cm, float("-inf"))
        return torch.softmax((q * float(scale)) @ k.transpose(-1, -2) + bias, -1) @ v

    exact = attend(q.double(), k.double(), v.double(), torch.float64)
    return ({"input.query": q, "input.key": k, "input.value": v, **mask_tensors(kp, am),
             "output.torch": attend(q, k, v, dt), "output.exact": exact}, {"scale": scale, "causal": causal})


def build_mha16(c: Case, B, L, E, H, S=None, kpm=None):
    """nn.MultiheadAttention(E, H, batch_first=True) cast to the case's 16-bit dtype as a PyTorch
    user would (module.to(dtype)), in inference (no_grad, need_weights=False: PyTorch's fast
    path): output.torch, with output.exact the same module and inputs in float64. Self-attention,
    or cross-attention over a key (B, S, E) that is also the value."""
    dt = c.dtype
    m = reinit(nn.MultiheadAttention(E, H, batch_first=True).to(dt))
    query = torch.randn(B, L, E).to(dt)
    key = query if S is None else torch.randn(B, S, E).to(dt)
    kp = make_kpm(kpm, B, key.shape[1], dt)
    out = m(query, key, key, key_padding_mask=kp, need_weights=False)[0]
    exact = copy.deepcopy(m).double()(query.double(), key.double(), key.double(), key_padding_mask=kp,
                                      need_weights=False)[0]
    inputs = {"input.query": query, "input.key": key, "input.value": key}
    return ({**params(m), **inputs, **mask_tensors(kp, None), "output.torch": out, "output.exact": exact},
            mha_meta(E, H, E, E, True, False, False, "torch", False, True, "none"))


def build_sdpa(c: Case, scale, kpm=None, mask=None, shape=(2, 3, 5, 7, 4, 6), weights=True):
    """softmax(q @ k^T * scale + bias) @ v; shape = (B, H, L, S, D, Dv); weights: also store
    output.attn_weights (B, H, L, S)."""
    dt = c.dtype
    B, H, L, S, d, dv = shape
    q, k, v = torch.randn(B, H, L, d, dtype=dt), torch.randn(B, H, S, d, dtype=dt), torch.randn(B, H, S, dv, dtype=dt)

    key_padding_mask, attn_mask = draw_masks(
        lambda: (make_kpm(kpm, B, S, dt), make_attn_mask(mask, B, H, L, S, dt)), B, H, L, S)
    bias = additive_bias(key_padding_mask, attn_mask, B, H, L, S, dt)
    w = torch.softmax(q @ k.transpose(-1, -2) * float(scale) + bias, -1)
    tensors = {"input.query": q, "input.key": k, "input.value": v, **mask_tensors(key_padding_mask, attn_mask)}
    tensors["output.output"] = w @ v
    if weights:
        tensors["output.attn_weights"] = w
    return tensors, {"scale": scale}


# --- decoding: grouped-query attention, the attention core's options, torch.nn layers ---

def opt_meta(value) -> str:
    """An optional option as metadata: its value, or "none"."""
    return "none" if value is None else s(value)


def build_gqa(c: Case, B, L, E, H, K, D=None, kpm=None, q_gain=1.0, kv_cache_dtype=None, **opts):
    """LlamaAttention (HF Llama / Mistral / Qwen2 / Gemma 2 attention), causal over x (B, L, E).
    opts: qkv_bias, rope, rotary_dim, rope_theta, interleaved, sliding_window,
    attn_logit_softcapping, sinks (param.sinks, 2 randn). q_gain (a power of two: exact) scales q_proj to spread the logits
    where the softcap should bite. kpm: a bool key_padding_mask (ragged prompts).
    kv_cache_dtype ("bfloat16", "float16", "int8"): the keys and values go through a KV cache
    stored in that type (ref.kv_store): output.torch is that, output.exact the same module and
    inputs in float64 without the storage."""
    m = reinit(ref.LlamaAttention(E, H, K, D, **opts).to(c.dtype))
    m.q_proj.weight *= q_gain
    if m.sinks is not None:  # logits of the scores' size, so that the sinks take a real share
        m.sinks *= 2 / 0.3
    x = torch.randn(B, L, E, dtype=c.dtype)
    kp, _, _ = draw_case_masks(B, H, L, L, c.dtype, kpm, None, "bottom_right")
    m.kv_store = ref.kv_store(kv_cache_dtype) if kv_cache_dtype else None
    out = m(x, kp)
    assert not out.isnan().any(), c.name
    meta = {"embed_dim": E, "num_heads": H, "num_kv_heads": K, "head_dim": m.head_dim, "qkv_bias": s(opts.get(
            "qkv_bias", False)), "rope": s(m.rope), "rotary_dim": m.rotary_dim if m.rope else 0,
            "rope_theta": s(m.rope_theta), "rope_interleaved": s(m.interleaved),
            "sliding_window": opt_meta(m.sliding_window), "softcap": opt_meta(m.softcap), "causal": "bottom_right"}
    tensors = {**params(m), "input.x": x, **mask_tensors(kp, None)}
    if not kv_cache_dtype:
        return {**tensors, "output.output": out}, meta
    exact = copy.deepcopy(m).double()
    exact.kv_store = None
    return ({**tensors, "output.torch": out, "output.exact": exact(x.double(), kp)},
            {**meta, "kv_cache_dtype": kv_cache_dtype})


def build_kv_int8(c: Case, N, D):
    """KVCache<T, int8>'s quantisation (ref.quantize_int8) of N rows (N, D): input.rows,
    output.q (the integers, in the case's dtype), output.scale (N, 1). Row 0 is zero; row 1 has
    max|x| = 127 (scale exactly 1) and halves, which round to even."""
    rows = torch.randn(N, D, dtype=c.dtype) * torch.logspace(-3, 3, N, dtype=c.dtype)[:, None]
    rows[0] = 0
    rows[1] = torch.randn(D, dtype=c.dtype).clamp(-100, 100)
    rows[1, :6] = torch.tensor([127.0, 2.5, -3.5, 0.5, -0.5, -126.5])
    q, scale = ref.quantize_int8(rows)
    return {"input.rows": rows, "output.q": q, "output.scale": scale}, {"rows": N, "head_dim": D}


def draw_unblocked_kpm(kind, B, H, L, S, dtype, blocked_ls) -> Optional[torch.Tensor]:
    """A key_padding_mask (make_kpm) that, with the (L, S) bool mask blocked_ls, leaves every
    query row some key."""
    for _ in range(1000):
        kp = make_kpm(kind, B, S, dtype)
        if not fully_masked_rows(kp, blocked_ls, B, H, L, S).any():
            return kp
    raise RuntimeError("could not draw a key_padding_mask")


def build_attention_core(c: Case, shape, causal="none", window=None, softcap=None, alibi=False, kpm=None,
                         q_gain=1.0, sinks=False, lse=False, grad=False):
    """attention_reference (float64) on q (B, H, L, D), k, v (B, K, S, D): grouped heads,
    causal, sliding window, softcap, ALiBi (input.alibi_slopes, BLOOM's slopes), a bool
    key_padding_mask; scale 1/sqrt(D). q_gain spreads the logits (softcap). sinks: gpt-oss
    attention sinks input.sinks (H), 2 randn (logits of the scores' size). lse: also
    output.lse (B, H, L), torch.logsumexp of the logits (the sinks included). grad: also
    input.grad_output (randn, out's shape) and torch.autograd's output.grad_query, grad_key and
    grad_value of sum(out * grad_output)."""
    dt = c.dtype
    B, H, K, L, S, D = shape
    q = torch.randn(B, H, L, D, dtype=dt) * q_gain
    k, v = torch.randn(B, K, S, D, dtype=dt), torch.randn(B, K, S, D, dtype=dt)
    align = "bottom_right" if causal == "none" else causal
    blocked_ls = ref.causal_window_mask(L, S, align, window) if causal != "none" or window else None
    kp = draw_unblocked_kpm(kpm, B, H, L, S, dt, blocked_ls) if kpm else None
    slopes = ref.alibi_slopes(H).to(dt) if alibi else None
    sink_logits = 2 * torch.randn(H, dtype=dt) if sinks else None
    for t in (q, k, v):
        t.requires_grad_(grad)
    with torch.set_grad_enabled(grad):  # (the builders run under no_grad)
        out = ref.attention_reference(q, k, v, causal=causal, sliding_window=window, softcap=softcap, alibi=slopes,
                                      mask_bias=None if kp is None else additive_bias(kp, None, B, H, L, S, dt),
                                      sinks=sink_logits, return_lse=lse)
    out, lse_out = out if lse else (out, None)
    grads = {}
    if grad:
        grad_output = torch.randn(out.shape, dtype=dt)
        out.backward(grad_output)
        grads = {"input.grad_output": grad_output, "output.grad_query": q.grad, "output.grad_key": k.grad,
                 "output.grad_value": v.grad}
    q, k, v, out = (t.detach() for t in (q, k, v, out))
    tensors = {"input.query": q, "input.key": k, "input.value": v, **mask_tensors(kp, None), "output.output": out,
               **grads}
    if alibi:
        tensors["input.alibi_slopes"] = slopes
    if sinks:
        tensors["input.sinks"] = sink_logits
    if lse:
        tensors["output.lse"] = lse_out.detach()
    meta = {"num_heads": H, "num_kv_heads": K, "causal": causal, "sliding_window": opt_meta(window),
            "softcap": opt_meta(softcap), "alibi": s(alibi), "scale": "default"}
    return tensors, meta


def torch_layer_meta(E, H, ffn, activation, norm_first, eps, causal):
    return {"embed_dim": E, "num_heads": H, "ffn_dim": ffn, "activation": activation, "norm_first": s(norm_first),
            "layer_norm_eps": s(eps), "causal": causal}


def slow_path(module, *args, **kw):
    """A torch.nn transformer layer's forward with autograd on, so PyTorch 1.13 takes its
    reference path, F.multi_head_attention_forward, rather than its fused eval fast path."""
    with torch.enable_grad():
        return module(*args, **kw).detach()


def build_torch_encoder_layer(c: Case, shape, H, ffn, activation="relu", norm_first=False, eps=1e-5, kpm=None,
                              mask=None, causal="none"):
    """torch.nn.TransformerEncoderLayer(batch_first=True, dropout 0) on src (B, L, E): src_mask
    (causal merged in, not stored) and src_key_padding_mask."""
    B, L, E = shape
    m = reinit(nn.TransformerEncoderLayer(E, H, ffn, dropout=0.0, activation=activation, layer_norm_eps=eps,
                                          batch_first=True, norm_first=norm_first).to(c.dtype))
    src = torch.randn(shape, dtype=c.dtype)
    kp, am, _ = draw_case_masks(B, H, L, L, c.dtype, kpm, mask, causal)
    out = slow_path(m, src, src_mask=with_causal(am, causal, L, L), src_key_padding_mask=kp)
    assert not out.isnan().any(), c.name
    tensors = {**params(m), "input.src": src, "output.output": out}
    for name, t in (("input.src_mask", am), ("input.src_key_padding_mask", kp)):
        if t is not None:
            tensors[name] = t
    return tensors, torch_layer_meta(E, H, ffn, activation, norm_first, eps, causal)


def build_torch_decoder_layer(c: Case, B, T, S, E, H, ffn, activation="relu", norm_first=False, eps=1e-5,
                              tgt_kpm=None, memory_kpm=None, causal="top_left"):
    """torch.nn.TransformerDecoderLayer(batch_first=True, dropout 0) on tgt (B, T, E) over memory
    (B, S, E): tgt_mask = the causal mask (not stored), tgt_key_padding_mask,
    memory_key_padding_mask."""
    m = reinit(nn.TransformerDecoderLayer(E, H, ffn, dropout=0.0, activation=activation, layer_norm_eps=eps,
                                          batch_first=True, norm_first=norm_first).to(c.dtype))
    tgt, memory = torch.randn(B, T, E, dtype=c.dtype), torch.randn(B, S, E, dtype=c.dtype)
    tkp, _, _ = draw_case_masks(B, H, T, T, c.dtype, tgt_kpm, None, causal)
    mkp, _, _ = draw_case_masks(B, H, T, S, c.dtype, memory_kpm, None)
    out = slow_path(m, tgt, memory, tgt_mask=causal_mask(causal, T, T), tgt_key_padding_mask=tkp,
                    memory_key_padding_mask=mkp)
    assert not out.isnan().any(), c.name
    tensors = {**params(m), "input.tgt": tgt, "input.memory": memory, "output.output": out}
    for name, t in (("input.tgt_key_padding_mask", tkp), ("input.memory_key_padding_mask", mkp)):
        if t is not None:
            tensors[name] = t
    return tensors, torch_layer_meta(E, H, ffn, activation, norm_first, eps, causal)


def in16(builder: Callable) -> Callable:
    """builder's case in the case's 16-bit dtype, as a PyTorch user runs a module cast with
    module.to(dtype): the builder's output.output becomes output.torch (PyTorch's own 16-bit
    result), and output.exact is the float64 result of the same module and inputs: the module
    the builder called (it must call exactly one, directly), copied to float64 and called
    again with its arguments in float64."""
    def build(c: Case, **kw):
        calls, depth, call = [], [0], nn.Module.__call__

        def record(module, *args, **kwargs):
            if depth[0] == 0:
                calls.append((module, args, kwargs))
            depth[0] += 1
            try:
                return call(module, *args, **kwargs)
            finally:
                depth[0] -= 1

        nn.Module.__call__ = record
        try:
            tensors, meta = builder(c, **kw)
        finally:
            nn.Module.__call__ = call
        assert len(calls) == 1, f"{c.name}: the builder called {len(calls)} modules"
        module, args, kwargs = calls[0]
        wide = lambda t: t.double() if torch.is_tensor(t) and t.is_floating_point() else t
        exact = copy.deepcopy(module).double()(*map(wide, args), **{k: wide(v) for k, v in kwargs.items()})
        tensors["output.torch"] = tensors.pop("output.output")
        tensors["output.exact"] = exact[0] if isinstance(exact, tuple) else exact
        return tensors, meta
    build.wrapped = builder
    return build


# ----------------------------------------------------------------------------
# The cases (names are fixed: the C++ tests refer to them). A case renamed after its
# data was made keeps its data with seed=<CRC-32 of the name it was made under>.
# ----------------------------------------------------------------------------

SA, MHA, SEP, FUSED = build_self_attention, build_mha_torch, build_mha_separate, build_mha_fused
TH, AB, ENC = build_talking_heads, build_attention_block, build_encoder

# self_attention (SingleHeadSelfAttention)
case("sa_e4_f32", SA, "SingleHeadSelfAttention x (2,3,4), embed_dim 4.", shape=(2, 3, 4), seed=0xB3DB4274)
case("sa_e4_f64", SA, "SingleHeadSelfAttention x (2,3,4), embed_dim 4, in float64.", shape=(2, 3, 4),
     seed=0x27CF1304)
case("sa_e6_f64", SA, "SingleHeadSelfAttention x (3,5,6) in float64; scores are divided by the float32 sqrt(6) "
     "(the module's quirk: torch.sqrt of a float32 tensor).", shape=(3, 5, 6))
case("sa_len1_f32", SA, "SingleHeadSelfAttention with sequence length 1: x (2,1,8).", shape=(2, 1, 8))

# multi_head_attention, layout torch (nn.MultiheadAttention, batch_first=True)
case("mha_self_e128_f32", MHA, "Self-attention (4,10,128), 8 heads, head-averaged weights (PyTorch fast path).",
     B=4, L=10, E=128, H=8, seed=0x98A31B9E)
case("mha_cross_f32", MHA, "Cross-attention query (2,7,32), key (2,11,20), value (2,11,12), kdim 20, vdim 12, "
     "4 heads, per-head weights.", B=2, L=7, S=11, E=32, H=4, kdim=20, vdim=12, inputs="cross", average=False)
case("mha_cross_f64", MHA, "Cross-attention with distinct query (2,5,24), key (2,9,24), value (2,9,24), 3 heads, "
     "averaged weights.", B=2, L=5, S=9, E=24, H=3, inputs="cross")
case("mha_one_head_f64", MHA, "Self-attention (2,6,10) with a single head, averaged weights.", B=2, L=6, E=10, H=1)
case("mha_len1_f32", MHA, "Self-attention with sequence length 1: (3,1,16), 2 heads, averaged weights.",
     B=3, L=1, E=16, H=2)
case("mha_odd_dims_f32", MHA, "Self-attention (3,13,30), 5 heads (head_dim 6), per-head weights.",
     B=3, L=13, E=30, H=5, average=False)
case("mha_kpm_bool_f32", MHA, "Self-attention (3,8,16), 4 heads, bool key_padding_mask (True = ignore key, ~30%), "
     "averaged weights.", B=3, L=8, E=16, H=4, kpm="bool")
case("mha_kpm_float_f64", MHA, "Self-attention (2,7,12), 3 heads, float additive key_padding_mask (B,S) in [-2,2] "
     "with some -inf, averaged weights (PyTorch 1.13 adds a float key_padding_mask to the logits).",
     B=2, L=7, E=12, H=3, kpm="float")
case("mha_mask_bool2d_f32", MHA, "Self-attention (2,9,16), 2 heads, bool attn_mask (L,S) (True = masked, ~30%), "
     "averaged weights.", B=2, L=9, E=16, H=2, mask="bool2d")
case("mha_mask_bool3d_f64", MHA, "Self-attention (2,6,12), 3 heads, bool attn_mask (B*H,L,S), per-head weights.",
     B=2, L=6, E=12, H=3, mask="bool3d", average=False)
case("mha_mask_float2d_f32", MHA, "Cross-attention L=6, S=8, E=16 (distinct query, key, value), 4 heads, float "
     "attn_mask (L,S) in [-3,3] with some -inf, per-head weights.",
     B=2, L=6, S=8, E=16, H=4, inputs="cross", mask="float2d", average=False)
case("mha_mask_float3d_f64", MHA, "Self-attention (2,5,8), 2 heads, float attn_mask (B*H,L,S) in [-3,3] with "
     "some -inf, averaged weights.", B=2, L=5, E=8, H=2, mask="float3d")
case("mha_kpm_and_mask_f32", MHA, "Self-attention (2,7,16), 4 heads, bool key_padding_mask plus float attn_mask "
     "(L,S), averaged weights.", B=2, L=7, E=16, H=4, kpm="bool", mask="float2d")
case("mha_causal_top_left_f32", MHA, "Self-attention (2,9,16), 2 heads, causal top_left (computed with the bool mask "
     "ones(L,S).tril(0)==0, which is not stored), averaged weights.", B=2, L=9, E=16, H=2, causal="top_left")
case("mha_causal_top_left_cross_f64", MHA, "Cross-attention query (2,5,12), key=value (2,9,12), 3 heads, causal "
     "top_left (mask ones(L,S).tril(0)==0, not stored), per-head weights.",
     B=2, L=5, S=9, E=12, H=3, inputs="kv", causal="top_left", average=False)
case("mha_causal_bottom_right_f64", MHA, "Cross-attention query (2,5,12), key=value (2,9,12), 3 heads, causal "
     "bottom_right (mask ones(L,S).tril(S-L)==0, not stored), per-head weights.",
     B=2, L=5, S=9, E=12, H=3, inputs="kv", causal="bottom_right", average=False)
case("mha_fully_masked_f32", MHA, "Self-attention (2,6,16), 4 heads, bool key_padding_mask with every key of batch 1 "
     "masked and bool attn_mask (L,S) with row 2 all masked; PyTorch 1.13's NaNs replaced by the library policy: "
     "a fully masked row has weights 0 and output exactly out_proj.bias.",
     B=2, L=6, E=16, H=4, kpm="bool", mask="bool2d", full_rows=(2,), full_batches=(1,), average=False)
case("mha_bias_kv_f32", MHA, "Self-attention (2,5,16), 4 heads, add_bias_kv, bool key_padding_mask, averaged "
     "weights (S+1 columns; the bias_k column is never masked).", B=2, L=5, E=16, H=4, add_bias_kv=True, kpm="bool")
case("mha_zero_attn_f64", MHA, "Self-attention (2,5,12), 3 heads, add_zero_attn, bool attn_mask (L,S), per-head "
     "weights (S+1 columns; the zero column is never masked).",
     B=2, L=5, E=12, H=3, add_zero_attn=True, mask="bool2d", average=False)
case("mha_bias_kv_zero_attn_f32", MHA, "Self-attention (2,5,16), 2 heads, add_bias_kv and add_zero_attn, per-head "
     "weights (S+2 columns: keys, bias_k, zero).", B=2, L=5, E=16, H=2, add_bias_kv=True, add_zero_attn=True,
     average=False)
case("mha_no_bias_f32", MHA, "Self-attention (2,6,16), 4 heads, bias=False (no in_proj_bias, no out_proj.bias), "
     "averaged weights (computed by F.multi_head_attention_forward: 1.13's fast path rejects bias=False).",
     B=2, L=6, E=16, H=4, bias=False)
case("mha_large_logits_f32", MHA, "Self-attention (2,8,32), 4 heads, q/k in-projection scaled so that the max "
     "|scaled logit| is about 1e4 (see max_abs_logit), averaged weights.", B=2, L=8, E=32, H=4, large_logits=1e4)
case("mha_large_logits_f64", MHA, "Self-attention (2,8,32) in float64, 4 heads, q/k in-projection scaled so that "
     "the max |scaled logit| is about 1e4 (see max_abs_logit), averaged weights.", B=2, L=8, E=32, H=4,
     large_logits=1e4)
case("mha_unbatched_f32", MHA, "Unbatched self-attention: query=key=value (6,16), 4 heads, averaged weights; "
     "output (6,16), weights (6,6).", B=1, L=6, E=16, H=4, unbatched=True)

# multi_head_attention, layouts separate (SeparateProjectionMultiHeadAttention) and fused (MobileViTAttention)
case("mha_separate_f32", SEP, "SeparateProjectionMultiHeadAttention (q/k/v/out Linear), self-attention (4,10,128), "
     "8 heads.", B=4, L=10, E=128, H=8, seed=0x8A665DC2)
case("mha_separate_f64", SEP, "SeparateProjectionMultiHeadAttention in float64, cross query (2,5,48), key=value "
     "(2,7,48), 8 heads (head_dim 6: scores divided by the float32 sqrt(6)).", B=2, L=5, S=7, E=48, H=8,
     seed=0x1E720CB2)
case("mha_mobilevit_f32", FUSED, "MobileViTAttention (fused qkv_proj, out_proj), (2,14,64), 8 heads.",
     B=2, L=14, E=64, H=8, seed=0x4286D2B2)
case("mha_mobilevit_f64", FUSED, "MobileViTAttention in float64, (2,14,64), 8 heads.", B=2, L=14, E=64, H=8,
     seed=0xD69283C2)

# talking_heads (timm CaiT TalkingHeadAttn)
case("th_cait_f32", TH, "TalkingHeadAttn at CaiT's size with batch 2: x (2,784,128), 8 heads, qkv_bias false.",
     shape=(2, 784, 128), H=8, seed=0x66F57C3D)
case("th_small_f64", TH, "TalkingHeadAttn x (2,17,48), 6 heads, qkv_bias true.", shape=(2, 17, 48), H=6,
     qkv_bias=True)
case("th_one_head_f64", TH, "TalkingHeadAttn x (2,5,8) with one head (proj_l/proj_w are 1x1), qkv_bias true.",
     shape=(2, 5, 8), H=1, qkv_bias=True)
case("th_len1_f32", TH, "TalkingHeadAttn with sequence length 1: x (2,1,16), 4 heads.", shape=(2, 1, 16), H=4)
case("th_mask_f32", TH, "TalkingHeadAttn x (2,9,24), 4 heads, bool key_padding_mask + bool attn_mask (L,S) with "
     "row 3 fully masked, applied after proj_l (masked_fill -inf) before softmax; a fully masked row has softmax 0 "
     "(nan_to_num), then proj_w mixes as usual so its bias shows up.",
     shape=(2, 9, 24), H=4, kpm="bool", mask="bool2d", masked_row=3)
case("th_mask3d_f64", TH, "TalkingHeadAttn x (2,6,12), 3 heads, bool attn_mask (B*H,L,S) applied after proj_l "
     "(mask head index = head after proj_l mixing), no fully masked row.", shape=(2, 6, 12), H=3, mask="bool3d")
case("th_float_mask_f64", TH, "TalkingHeadAttn x (2,7,12), 2 heads, float attn_mask (L,S) in [-3,3] added to the "
     "logits after proj_l.", shape=(2, 7, 12), H=2, mask="float2d")

# attention_block (AttentionBlock), transformer_encoder (MobileViTTransformerEncoder)
case("ab_c64_l1024_f32", AB, "AttentionBlock x (2,64,1024) (N,C,L), 8 heads.", shape=(2, 64, 1024), H=8,
     seed=0xAE76847D)
case("ab_small_f64", AB, "AttentionBlock x (2,12,7) (N,C,L), 3 heads.", shape=(2, 12, 7), H=3)
case("enc_e64_f32", ENC, "MobileViT pre-norm TransformerEncoder x (2,14,64), ffn 128, 8 heads.",
     shape=(2, 14, 64), ffn=128, H=8, seed=0x72EF771E)
case("enc_e64_f64", ENC, "MobileViT pre-norm TransformerEncoder in float64: x (2,14,64), ffn 128, 8 heads.",
     shape=(2, 14, 64), ffn=128, H=8, seed=0xE6FB266E)
case("enc_odd_f64", ENC, "TransformerEncoder x (3,5,36), ffn 20, 4 heads.", shape=(3, 5, 36), ffn=20, H=4)
case("enc_len1_f32", ENC, "TransformerEncoder with sequence length 1: x (2,1,16), ffn 8, 2 heads.",
     shape=(2, 1, 16), ffn=8, H=2)

# io: every dtype
case("dtypes_f32", build_dtypes, "float32 values incl. rounding ties, subnormals and overflow converted by PyTorch "
     "to F16, BF16 and F64 (and back to F32), plus I64, I32, U8 and BOOL tensors.")

# ops and sdpa
for _p in ("f32", "f64"):
    case(f"ops_{_p}", build_ops, "Stateless ops on x (5,7): linear with and without bias, softmax, layer_norm, "
         "silu, gelu (erf) and gelu (tanh).")
case("sdpa_f32", build_sdpa, "softmax(q @ k^T * 0.3 + bias) @ v with q (2,3,5,4), k (2,3,7,4), v (2,3,7,6), bool "
     "key_padding_mask (B,S) and bool attn_mask (L,S), True = masked.", scale="0.3", kpm="bool", mask="bool2d")
case("sdpa_f64", build_sdpa, "softmax(q @ k^T * 0.7 + attn_mask) @ v with q (2,3,5,4), k (2,3,7,4), v (2,3,7,6) "
     "and a float additive attn_mask (B*H,L,S) with some -inf.", scale="0.7", mask="float3d")

# 16-bit modules against PyTorch's own (module.to(torch.bfloat16)): accuracy against float64
case("linear_small_bf16", build_linear16, "nn.Linear(7, 6) in bfloat16 on x (5,7).", shape=(5, 7), out_features=6)
case("linear_3d_bf16", build_linear16, "nn.Linear(130, 70) in bfloat16 on x (3,11,130).", shape=(3, 11, 130),
     out_features=70)
case("linear_deep_bf16", build_linear16, "nn.Linear(2101, 96) in bfloat16 on x (64,2101): k spans several k-blocks "
     "and is odd.", shape=(64, 2101), out_features=96)
case("linear_nobias_bf16", build_linear16, "nn.Linear(256, 384, bias=False) in bfloat16 on x (17,256).",
     shape=(17, 256), out_features=384, bias=False)

# --- The tiled kernel against PyTorch (need_weights off: the path users take by default) ---
# Lengths span several query blocks (64 floats with AVX-512, 16 with SSE2) and key tiles
# (128); head dims 9, 10 and 11 leave 1-3 value columns after the 4-wide register blocks.
# Self-attention reads k and v from the fused projection (strided), so the kernel packs
# them first; cross-attention with separate projections too (rows E apart).
FAST = dict(need_weights=False)
case("mha_fast_kpm_bool_f32", MHA, "Tiled kernel (need_weights off): self-attention (1,300,18), 2 heads (head_dim 9), "
     "bool key_padding_mask.", B=1, L=300, E=18, H=2, kpm="bool", **FAST)
case("mha_fast_kpm_float_f32", MHA, "Tiled kernel: self-attention (1,290,27), 3 heads (head_dim 9; odd, so PyTorch "
     "1.13 takes its slow path, which adds a float key_padding_mask), float key_padding_mask with -inf.",
     B=1, L=290, E=27, H=3, kpm="float", **FAST)
case("mha_fast_mask_bool2d_f32", MHA, "Tiled kernel: self-attention (1,300,22), 2 heads (head_dim 11), bool "
     "attn_mask (L,S).", B=1, L=300, E=22, H=2, mask="bool2d", **FAST)
case("mha_fast_mask_float2d_f32", MHA, "Tiled kernel: cross-attention query (1,180,20), key and value (1,260,20) "
     "distinct, 2 heads (head_dim 10), float attn_mask (L,S) in [-3,3] with -inf.",
     B=1, L=180, S=260, E=20, H=2, inputs="cross", mask="float2d", **FAST)
case("mha_fast_mask_bool3d_f32", MHA, "Tiled kernel: self-attention (1,260,18), 2 heads (head_dim 9), bool "
     "attn_mask (B*H,L,S).", B=1, L=260, E=18, H=2, mask="bool3d", **FAST)
case("mha_fast_mask_float3d_f32", MHA, "Tiled kernel: query (1,130,20), key = value (1,200,20), 2 heads (head_dim "
     "10), float attn_mask (B*H,L,S) in [-3,3] with -inf.", B=1, L=130, S=200, E=20, H=2, inputs="kv",
     mask="float3d", **FAST)
case("mha_fast_causal_top_left_f32", MHA, "Tiled kernel: self-attention (1,400,20), 2 heads (head_dim 10), causal "
     "top_left.", B=1, L=400, E=20, H=2, causal="top_left", **FAST)
case("mha_fast_causal_kpm_f64", MHA, "Tiled kernel: self-attention (1,200,20) in float64, 2 heads (head_dim 10), "
     "causal top_left plus bool key_padding_mask.", B=1, L=200, E=20, H=2, causal="top_left", kpm="bool", **FAST)
case("mha_fast_causal_bottom_right_f64", MHA, "Tiled kernel: query (1,200,18), key = value (1,330,18) in float64, "
     "2 heads (head_dim 9), causal bottom_right.", B=1, L=200, S=330, E=18, H=2, inputs="kv",
     causal="bottom_right", **FAST)
case("mha_fast_causal_bottom_right_long_q_f32", MHA, "Tiled kernel: query (1,450,22), key = value (1,300,22), 2 "
     "heads (head_dim 11), causal bottom_right: the first 150 rows see no key (output out_proj.bias).",
     B=1, L=450, S=300, E=22, H=2, inputs="kv", causal="bottom_right", **FAST)
case("mha_fast_fully_masked_f32", MHA, "Tiled kernel: self-attention (2,260,18), 2 heads (head_dim 9), bool "
     "key_padding_mask with batch 1 all masked and bool attn_mask (L,S) with rows 2, 100 and 259 all masked "
     "(output out_proj.bias there).", B=2, L=260, E=18, H=2, kpm="bool", mask="bool2d", full_rows=(2, 100, 259),
     full_batches=(1,), **FAST)
case("mha_fast_bias_kv_zero_attn_f32", MHA, "Tiled kernel: self-attention (1,300,20), 2 heads (head_dim 10), "
     "add_bias_kv and add_zero_attn, bool key_padding_mask and bool attn_mask (L,S).", B=1, L=300, E=20, H=2,
     add_bias_kv=True, add_zero_attn=True, kpm="bool", mask="bool2d", **FAST)
case("mha_fast_cross_f32", MHA, "Tiled kernel: cross-attention query (1,300,20), key (1,500,12), value (1,500,7), "
     "kdim 12, vdim 7, 2 heads (head_dim 10), bool key_padding_mask.", B=1, L=300, S=500, E=20, H=2, kdim=12, vdim=7,
     inputs="cross", kpm="bool", **FAST)
case("mha_fast_cross_f64", MHA, "Tiled kernel: cross-attention in float64, query (1,150,18), key and value "
     "(1,400,18) distinct, 2 heads (head_dim 9).", B=1, L=150, S=400, E=18, H=2, inputs="cross", **FAST)
case("mha_fast_large_logits_f32", MHA, "Tiled kernel: self-attention (1,300,20), 2 heads (head_dim 10), q/k "
     "in-projection scaled so that the max |scaled logit| is about 60: the softmax is far from one-hot (see "
     "median_max_weight).", B=1, L=300, E=20, H=2, large_logits=60, **FAST)
case("mha_fast_large_logits_f64", MHA, "Tiled kernel: self-attention (1,200,18) in float64, 2 heads (head_dim 9), "
     "bool key_padding_mask, logits spread over +-60 (not one-hot).", B=1, L=200, E=18, H=2, kpm="bool",
     large_logits=60, **FAST)
case("mha_logits25_f32", MHA, "Self-attention (2,12,16), 4 heads, logits spread over +-25 (not one-hot with 12 "
     "keys), per-head weights.", B=2, L=12, E=16, H=4, large_logits=25, average=False)

# --- masks in the other modules ------------------------------------------------------
case("sa_masks_f32", SA, "SingleHeadSelfAttention x (2,9,8), bool key_padding_mask and float attn_mask (L,S) in "
     "[-3,3] with -inf, added to the scores before softmax.", shape=(2, 9, 8), kpm="bool", mask="float2d")
case("sa_mask3d_causal_f64", SA, "SingleHeadSelfAttention x (2,7,6) in float64, bool attn_mask (B,L,S) and causal "
     "top_left.", shape=(2, 7, 6), mask="bool3d", causal="top_left")
case("sa_fully_masked_f32", SA, "SingleHeadSelfAttention x (2,6,8), bool attn_mask (L,S) with row 2 all masked "
     "(output 0 there).", shape=(2, 6, 8), mask="bool2d", full_rows=(2,))
case("sa_long_causal_f32", SA, "SingleHeadSelfAttention x (1,300,10), causal top_left plus bool key_padding_mask "
     "(tiled kernel over several blocks; 10 value columns).", shape=(1, 300, 10), kpm="bool", causal="top_left")
case("th_neginf_causal_f32", TH, "TalkingHeadAttn x (2,9,24), 4 heads, bool key_padding_mask, float attn_mask (L,S) "
     "with -inf and causal, all applied after proj_l.", shape=(2, 9, 24), H=4, kpm="bool", mask="float2d",
     causal="top_left", p_inf=0.15)
case("th_mask3d_neginf_f64", TH, "TalkingHeadAttn x (2,7,12) in float64, 3 heads, float attn_mask (B*H,L,S) in "
     "[-3,3] with -inf, indexed by the head after proj_l.", shape=(2, 7, 12), H=3, mask="float3d", p_inf=0.15)
case("th_causal_f64", TH, "TalkingHeadAttn x (2,40,12) in float64, 3 heads, causal.", shape=(2, 40, 12), H=3,
     causal="top_left")
case("th_causal_long_f32", TH, "TalkingHeadAttn x (1,150,24), 4 heads, causal plus bool key_padding_mask (several "
     "query blocks and key tiles).", shape=(1, 150, 24), H=4, kpm="bool", causal="top_left")
case("ab_masks_f32", AB, "AttentionBlock x (2,12,9) (N,C,L), 3 heads, bool key_padding_mask and float attn_mask "
     "(L,S) with -inf, passed to the inner nn.MultiheadAttention.", shape=(2, 12, 9), H=3, kpm="bool", mask="float2d")
case("ab_mask3d_causal_f64", AB, "AttentionBlock x (2,8,7) in float64, 2 heads, bool attn_mask (B*H,L,S) and "
     "causal.", shape=(2, 8, 7), H=2, mask="bool3d", causal="top_left")
case("ab_fully_masked_f32", AB, "AttentionBlock x (2,8,6), 2 heads, bool key_padding_mask with batch 1 all masked "
     "and bool attn_mask (L,S) with row 2 all masked: there the attention output is out_proj.bias.",
     shape=(2, 8, 6), H=2, kpm="bool", mask="bool2d", full_rows=(2,), full_batches=(1,))
case("ab_long_f32", AB, "AttentionBlock x (1,20,300), 2 heads (head_dim 10), bool key_padding_mask and bool "
     "attn_mask (L,S) (tiled kernel).", shape=(1, 20, 300), H=2, kpm="bool", mask="bool2d")
case("enc_masks_f32", ENC, "TransformerEncoder x (2,9,24), ffn 20, 4 heads, bool key_padding_mask and bool attn_mask "
     "(L,S) with row 3 all masked, added to the attention logits.", shape=(2, 9, 24), ffn=20, H=4, kpm="bool",
     mask="bool2d", full_rows=(3,))
case("enc_mask3d_f64", ENC, "TransformerEncoder x (2,7,12) in float64, ffn 10, 3 heads, float attn_mask (B*H,L,S) "
     "with -inf.", shape=(2, 7, 12), ffn=10, H=3, mask="float3d")
case("sdpa_bf16", build_sdpa16, "softmax(q * 0.125 @ k^T + bias) @ v in bfloat16 with q (2,3,5,64), k and v "
     "(2,3,7,64), bool key_padding_mask and bool attn_mask (L,S).", scale="0.125", shape=(2, 3, 5, 7, 64, 64),
     kpm="bool", mask="bool2d")
case("sdpa_long_bf16", build_sdpa16, "softmax(q * 0.1 @ k^T + bias) @ v in bfloat16 with q (1,2,150,72), k (1,2,260,72), "
     "v (1,2,260,56), causal (bottom right) and a float key_padding_mask with -inf: the tiled kernel.", scale="0.1",
     shape=(1, 2, 150, 260, 72, 56), kpm="float", causal="bottom_right")
case("sdpa_decode_bf16", build_sdpa16, "softmax(q * 0.125 @ k^T) @ v in bfloat16 with q (1,3,2,64), k (1,3,600,64) and v "
     "(1,3,600,48): a decode step of two tokens (the decode tile reads bfloat16 k and v in place).", scale="0.125",
     shape=(1, 3, 2, 600, 64, 48))
case("mha_self_bf16", build_mha16, "nn.MultiheadAttention(128, 4) in bfloat16, self-attention on (2,50,128), bool "
     "key_padding_mask.", B=2, L=50, E=128, H=4, kpm="bool")
case("mha_cross_bf16", build_mha16, "nn.MultiheadAttention(96, 2) in bfloat16, cross-attention from (1,70,96) over "
     "(1,150,96).", B=1, L=70, E=96, H=2, S=150)

case("enc_causal_f32", ENC, "TransformerEncoder x (2,10,16), ffn 8, 2 heads, causal plus float key_padding_mask "
     "with -inf.", shape=(2, 10, 16), ffn=8, H=2, kpm="float", causal="top_left")
case("enc_long_f32", ENC, "TransformerEncoder x (1,300,20), ffn 12, 2 heads (head_dim 10), causal plus bool "
     "key_padding_mask (tiled kernel on the fused projection).", shape=(1, 300, 20), ffn=12, H=2, kpm="bool",
     causal="top_left")
case("sdpa_long_f32", build_sdpa, "softmax(q @ k^T * 0.35 + bias) @ v with q (1,2,300,9), k (1,2,333,9), "
     "v (1,2,333,11), bool key_padding_mask and bool attn_mask (L,S); no weights stored.", scale="0.35", kpm="bool",
     mask="bool2d", shape=(1, 2, 300, 333, 9, 11), weights=False)
case("sdpa_long_f64", build_sdpa, "softmax(q @ k^T * 0.5 + bias) @ v in float64 with q (1,1,200,10), k (1,1,260,10), "
     "v (1,1,260,7), float key_padding_mask with -inf; no weights stored.", scale="0.5", kpm="float",
     shape=(1, 1, 200, 260, 10, 7), weights=False)


# --- decoding (GitHub issue "Decoding"): grouped-query attention (LlamaAttention), the
# attention core's window / softcap / ALiBi, torch.nn.TransformerEncoderLayer and
# TransformerDecoderLayer. Lengths 70-130 cross the kernels' query blocks and key tiles.
GQA, CORE, TEL, TDL = build_gqa, build_attention_core, build_torch_encoder_layer, build_torch_decoder_layer
case("gqa_llama_f32", GQA, "LlamaAttention x (2,9,32), 4 heads over 2 kv heads (head_dim 8), rope rotate_half, "
     "theta 1e4.", B=2, L=9, E=32, H=4, K=2)
case("gqa_llama_f64", GQA, "LlamaAttention in float64, x (2,9,32), 4 heads over 2 kv heads, rope rotate_half.",
     B=2, L=9, E=32, H=4, K=2)
case("gqa_mqa_f64", GQA, "Multi-query attention (1 kv head for 4 query heads) in float64, x (2,11,32).",
     B=2, L=11, E=32, H=4, K=1)
case("gqa_mha_f32", GQA, "num_kv_heads = num_heads = 4 (plain multi-head attention with rope), x (2,8,32).",
     B=2, L=8, E=32, H=4, K=4)
case("gqa_interleaved_f32", GQA, "GPT-J pairing (interleaved), x (2,10,32), 4 heads over 2 kv heads.",
     B=2, L=10, E=32, H=4, K=2, interleaved=True)
case("gqa_partial_rotary_f64", GQA, "Partial rotary (GPT-NeoX / Phi): the first 4 of 8 dims rotated, rotate_half, "
     "float64, x (2,10,32).", B=2, L=10, E=32, H=4, K=2, rotary_dim=4)
case("gqa_partial_interleaved_f32", GQA, "Partial rotary with GPT-J pairing: the first 6 of 12 dims rotated, "
     "interleaved, x (2,9,48), 4 heads over 2 kv heads.", B=2, L=9, E=48, H=4, K=2, rotary_dim=6, interleaved=True)
case("gqa_no_rope_f32", GQA, "No rotary embedding, x (2,8,32), 4 heads over 2 kv heads.", B=2, L=8, E=32, H=4, K=2,
     rope=False)
case("gqa_theta_f64", GQA, "rope_theta 5e5 (Llama 3), float64, x (2,12,32), 4 heads over 1 kv head.",
     B=2, L=12, E=32, H=4, K=1, rope_theta=500000.0)
case("gqa_window_small_f32", GQA, "Mistral sliding window 4 over x (2,20,32), 4 heads over 2 kv heads.",
     B=2, L=20, E=32, H=4, K=2, sliding_window=4)
case("gqa_window_large_f64", GQA, "Sliding window 50 longer than the sequence x (2,20,32) (plain causal), float64.",
     B=2, L=20, E=32, H=4, K=2, sliding_window=50)
case("gqa_softcap_f32", GQA, "Gemma 2 logit softcap 5 with q_proj scaled by 4 (logits spread beyond the cap), x "
     "(2,10,32), 4 heads over 2 kv heads.", B=2, L=10, E=32, H=4, K=2, attn_logit_softcapping=5.0, q_gain=4.0)
case("gqa_qkv_bias_f32", GQA, "Qwen2 q/k/v biases, x (2,9,32), 4 heads over 2 kv heads.", B=2, L=9, E=32, H=4, K=2,
     qkv_bias=True)
case("gqa_head_dim_f64", GQA, "head_dim 10 != E/H, x (2,9,24), 4 heads over 2 kv heads, float64.",
     B=2, L=9, E=24, H=4, K=2, D=10)
case("gqa_kpm_f32", GQA, "Bool key_padding_mask (ragged prompts) with causal masking, x (2,12,32), 4 heads over 2 "
     "kv heads.", B=2, L=12, E=32, H=4, K=2, kpm="bool")
case("gqa_long_window_f32", GQA, "x (1,130,40), 4 heads over 2 kv heads (head_dim 10), rope, sliding window 48 "
     "(several query blocks and key tiles).", B=1, L=130, E=40, H=4, K=2, sliding_window=48)
case("gqa_long_combined_f64", GQA, "Everything at once in float64: x (2,100,24), 6 heads over 1 kv head, head_dim 12, "
     "q/k/v biases, interleaved partial rotary (8 of 12), theta 5e5, window 37, softcap 6 (q_proj x4).",
     B=2, L=100, E=24, H=6, K=1, D=12, qkv_bias=True, rotary_dim=8, interleaved=True, rope_theta=500000.0,
     sliding_window=37, attn_logit_softcapping=6.0, q_gain=4.0)
case("gqa_combined_f32", GQA, "x (1,70,32), 8 heads over 2 kv heads (head_dim 6), q/k/v biases, rotate_half partial "
     "rotary (4 of 6), theta 1e6, window 20, softcap 8 (q_proj x4).", B=1, L=70, E=32, H=8, K=2, D=6,
     qkv_bias=True, rotary_dim=4, rope_theta=1e6, sliding_window=20, attn_logit_softcapping=8.0, q_gain=4.0)
case("gqa_sinks_f32", GQA, "gpt-oss attention sinks (param.sinks, one logit per head) with a sliding window 6, x "
     "(2,11,32), 4 heads over 2 kv heads, q/k/v biases.", B=2, L=11, E=32, H=4, K=2, qkv_bias=True,
     sliding_window=6, sinks=True)
case("gqa_sinks_f64", GQA, "Attention sinks in float64, x (1,9,24), 6 heads over 3 kv heads (head_dim 4).",
     B=1, L=9, E=24, H=6, K=3, D=4, sinks=True)

case("core_gqa_f32", CORE, "Attention core q (2,6,9,8) over k, v (2,2,9,8): 3 query heads per kv head, no mask.",
     shape=(2, 6, 2, 9, 9, 8))
case("core_gqa_cross_f64", CORE, "q (2,4,5,8) over k, v (2,1,12,8) in float64 (multi-query, L != S), no mask.",
     shape=(2, 4, 1, 5, 12, 8))
case("core_window_f32", CORE, "Sliding window 5 (implies causal) over L = S = 20, 4 heads over 2.",
     shape=(1, 4, 2, 20, 20, 8), window=5)
case("core_window_bottom_right_f64", CORE, "Sliding window 6, causal bottom_right, q (2,2,7,8) over k, v (2,2,20,8).",
     shape=(2, 2, 2, 7, 20, 8), causal="bottom_right", window=6)
case("core_window_top_left_f32", CORE, "Sliding window 4 with causal top_left (diag(i) = i), q (2,2,7,8) over "
     "(2,2,20,8).", shape=(2, 2, 2, 7, 20, 8), causal="top_left", window=4)
case("core_softcap_f64", CORE, "Softcap 2 with q x 3 (logits beyond the cap), q (2,4,6,8) over (2,2,10,8).",
     shape=(2, 4, 2, 6, 10, 8), softcap=2.0, q_gain=3.0)
case("core_alibi_f32", CORE, "ALiBi alone (slopes 2^(-2(h+1)), 4 heads), L = S = 8, no causal masking.",
     shape=(2, 4, 4, 8, 8, 8), alibi=True)
case("core_alibi_bottom_right_f64", CORE, "ALiBi plus causal bottom_right, q (2,4,5,8) over (2,2,11,8).",
     shape=(2, 4, 2, 5, 11, 8), alibi=True, causal="bottom_right")
case("core_combined_f64", CORE, "GQA 6 over 3, window 7, softcap 3 (q x 3), ALiBi and a bool key_padding_mask, q "
     "(2,6,9,8) over (2,3,15,8).", shape=(2, 6, 3, 9, 15, 8), window=7, softcap=3.0, alibi=True, kpm="bool",
     q_gain=3.0)
case("core_combined_long_f32", CORE, "GQA 4 over 2, window 40, softcap 4 (q x 3), ALiBi, causal bottom_right, q "
     "(1,4,100,10) over (1,2,150,10) (several query blocks and key tiles).", shape=(1, 4, 2, 100, 150, 10),
     causal="bottom_right", window=40, softcap=4.0, alibi=True, q_gain=3.0)
case("core_sinks_f32", CORE, "gpt-oss attention sinks (one logit per head) with causal bottom_right, GQA 4 over 2, "
     "q (2,4,9,8) over (2,2,9,8), and the log-sum-exp (output.lse).", shape=(2, 4, 2, 9, 9, 8),
     causal="bottom_right", sinks=True, lse=True)
case("core_sinks_decode_f64", CORE, "Sinks, window 16 and a bool key_padding_mask for 3 queries (the decode tile) over "
     "40 keys, GQA 4 over 2, float64, with output.lse.", shape=(2, 4, 2, 3, 40, 8), causal="bottom_right",
     window=16, kpm="bool", sinks=True, lse=True)
case("core_lse_long_f32", CORE, "The log-sum-exp (output.lse) of q (1,4,70,16) over (1,2,200,16), softcap 4 (q x 3), "
     "no mask: the key ranges the merge tests split and merge.", shape=(1, 4, 2, 70, 200, 16), softcap=4.0,
     q_gain=3.0, lse=True)
# the backward pass: torch.autograd's gradients of q, k and v
case("core_backward_gqa_f64", CORE, "Gradients (torch.autograd) of the attention core q (2,6,9,8) over k, v (2,2,11,8), "
     "3 query heads per kv head, no mask, float64.", shape=(2, 6, 2, 9, 11, 8), grad=True)
case("core_backward_window_top_left_f32", CORE, "Gradients with a sliding window 4, causal top_left, q (2,2,7,8) over "
     "(2,2,20,8).", shape=(2, 2, 2, 7, 20, 8), causal="top_left", window=4, grad=True)
case("core_backward_combined_f64", CORE, "Gradients with GQA 6 over 3, window 7, softcap 3 (q x 3), ALiBi and a bool "
     "key_padding_mask, q (2,6,9,8) over (2,3,15,8), float64.", shape=(2, 6, 3, 9, 15, 8), window=7, softcap=3.0,
     alibi=True, kpm="bool", q_gain=3.0, grad=True)
case("core_backward_sinks_f64", CORE, "Gradients with sinks and causal bottom_right, GQA 4 over 2, q (2,4,9,8) over "
     "(2,2,9,8), float64.", shape=(2, 4, 2, 9, 9, 8), causal="bottom_right", sinks=True, grad=True)
case("core_backward_long_f32", CORE, "Gradients with GQA 4 over 2, window 40, softcap 4 (q x 3), ALiBi, causal "
     "bottom_right, q (1,4,100,10) over (1,2,150,10) (several query and key tiles).", shape=(1, 4, 2, 100, 150, 10),
     causal="bottom_right", window=40, softcap=4.0, alibi=True, q_gain=3.0, grad=True)

case("tel_relu_post_f32", TEL, "nn.TransformerEncoderLayer src (2,9,16), 4 heads, ffn 24, relu, post-norm.",
     shape=(2, 9, 16), H=4, ffn=24)
case("tel_gelu_pre_f64", TEL, "nn.TransformerEncoderLayer in float64, src (2,9,16), 4 heads, ffn 24, gelu, "
     "norm_first, layer_norm_eps 1e-6.", shape=(2, 9, 16), H=4, ffn=24, activation="gelu", norm_first=True, eps=1e-6)
case("tel_kpm_f32", TEL, "src (2,10,24), 3 heads, ffn 16, gelu, post-norm, eps 1e-3, bool src_key_padding_mask.",
     shape=(2, 10, 24), H=3, ffn=16, activation="gelu", eps=1e-3, kpm="bool")
case("tel_masks_causal_f64", TEL, "float64 src (2,8,16), 2 heads, ffn 12, relu, norm_first, float src_mask (L,S) "
     "with -inf, causal merged in (not stored), bool src_key_padding_mask.", shape=(2, 8, 16), H=2, ffn=12,
     norm_first=True, kpm="bool", mask="float2d", causal="top_left")
case("tel_long_f32", TEL, "src (1,130,20), 2 heads (head_dim 10), ffn 32, relu, norm_first, bool "
     "src_key_padding_mask (tiled kernel).", shape=(1, 130, 20), H=2, ffn=32, norm_first=True, kpm="bool")
case("tdl_relu_post_f32", TDL, "nn.TransformerDecoderLayer tgt (2,7,16) over memory (2,11,16), 4 heads, ffn 24, "
     "relu, post-norm, causal tgt_mask.", B=2, T=7, S=11, E=16, H=4, ffn=24)
case("tdl_gelu_pre_f64", TDL, "float64, tgt (2,8,16) over memory (2,6,16), 2 heads, ffn 20, gelu, norm_first, "
     "layer_norm_eps 1e-6, causal.", B=2, T=8, S=6, E=16, H=2, ffn=20, activation="gelu", norm_first=True, eps=1e-6)
case("tdl_masks_f32", TDL, "tgt (2,9,24) over memory (2,10,24), 3 heads, ffn 16, relu, post-norm, eps 1e-3, causal, "
     "bool tgt_key_padding_mask and memory_key_padding_mask.", B=2, T=9, S=10, E=24, H=3, ffn=16, eps=1e-3,
     tgt_kpm="bool", memory_kpm="bool")
case("tdl_no_causal_f64", TDL, "float64, tgt (2,6,12) over memory (2,9,12), 2 heads, ffn 10, gelu, post-norm, no "
     "causal mask, bool memory_key_padding_mask.", B=2, T=6, S=9, E=12, H=2, ffn=10, activation="gelu",
     memory_kpm="bool", causal="none")
case("tdl_long_f32", TDL, "tgt (1,100,20) over memory (1,140,20), 2 heads (head_dim 10), ffn 24, gelu, norm_first, "
     "causal, bool memory_key_padding_mask (tiled kernel).", B=1, T=100, S=140, E=20, H=2, ffn=24,
     activation="gelu", norm_first=True, memory_kpm="bool")

# Every module cast to bfloat16 against PyTorch's own (module.to(torch.bfloat16)): accuracy against float64
case("sa_bf16", in16(SA), "SingleHeadSelfAttention in bfloat16, x (2,40,64).", shape=(2, 40, 64))
case("th_bf16", in16(TH), "timm CaiT TalkingHeadAttn in bfloat16, x (2,50,64), 4 heads.", shape=(2, 50, 64), H=4)
case("ab_bf16", in16(AB), "AttentionBlock in bfloat16, x (2,64,50), 4 heads.", shape=(2, 64, 50), H=4)
case("enc_bf16", in16(ENC), "MobileViTTransformerEncoder in bfloat16, x (2,40,64), ffn 128, 4 heads.",
     shape=(2, 40, 64), ffn=128, H=4)
case("gqa_bf16", in16(GQA), "LlamaAttention in bfloat16, x (2,40,128), 4 heads over 2 kv heads, rope rotate_half, "
     "qkv bias.", B=2, L=40, E=128, H=4, K=2, qkv_bias=True)
case("tel_bf16", in16(TEL), "nn.TransformerEncoderLayer in bfloat16, src (2,30,64), 4 heads, ffn 128, gelu, "
     "post-norm, bool src_key_padding_mask.", shape=(2, 30, 64), H=4, ffn=128, activation="gelu", kpm="bool")
case("gqa_kv_bf16_f32", GQA, "LlamaAttention x (2,40,64) over a KV cache in bfloat16 (float32 compute), 4 heads "
     "over 2 kv heads, rope.", B=2, L=40, E=64, H=4, K=2, kv_cache_dtype="bfloat16")
case("gqa_kv_f16_f32", GQA, "LlamaAttention x (2,40,64) over a KV cache in float16 (float32 compute), 4 heads "
     "over 2 kv heads, rope.", B=2, L=40, E=64, H=4, K=2, kv_cache_dtype="float16")
case("gqa_kv_int8_f32", GQA, "LlamaAttention x (2,40,64) over a KV cache in int8 (a scale per row, float32 compute), "
     "4 heads over 2 kv heads, rope, qkv bias.", B=2, L=40, E=64, H=4, K=2, qkv_bias=True, kv_cache_dtype="int8")
case("kv_int8_rows_f32", build_kv_int8, "KVCache int8 quantisation of 64 rows of 24 values, magnitudes 1e-3 to "
     "1e3, a zero row, and ties that round half to even.", N=64, D=24)
case("tdl_bf16", in16(TDL), "nn.TransformerDecoderLayer in bfloat16, tgt (2,20,64) over memory (2,30,64), 4 heads, "
     "ffn 128, relu, norm_first, causal, bool memory_key_padding_mask.", B=2, T=20, S=30, E=64, H=4, ffn=128,
     norm_first=True, memory_kpm="bool")



# --- attn_mask shapes that broadcast to (B, H, L, S) ---------------------------------

BROADCAST_SHAPES = ["L_S", "1_L_S", "H_L_S", "BH_L_S", "B_1_L_S", "1_H_L_S", "B_H_L_S", "B_1_1_S", "B_H_1_S",
                    "1_1_L_1", "1_1_1_S"]


def broadcast_shape(tag, B, H, L, S):
    """The shape a tag spells: L_S = (L, S), BH_L_S = (B*H, L, S), B_1_1_S = (B, 1, 1, S) ..."""
    sizes = {"B": B, "H": H, "L": L, "S": S, "BH": B * H, "1": 1}
    return tuple(sizes[d] for d in tag.split("_"))


def expand_mask(m, tag, B, H, L, S):
    """(B, H, L, S) view of a broadcast mask; (B*H, L, S) has nn.MultiheadAttention's
    meaning (index b*H + h), every other shape PyTorch's broadcasting (right-aligned)."""
    if tag == "BH_L_S":
        return m.reshape(B, H, L, S)
    return m.reshape((1,) * (4 - m.dim()) + tuple(m.shape)).expand(B, H, L, S)


def build_broadcast(c: Case, target, kind):
    """One attn_mask per shape of BROADCAST_SHAPES, for target sdpa, mha or talking_heads:
    input.<tag>.attn_mask and output.<tag>.output (and .attn_weights, per head, for sdpa and
    mha). kind "bool" (True = masked, whatever polarity the test passes it with; ~30%) or
    "float" (in [-3, 3], ~15% -inf). A (1, 1, L, 1) mask masks whole rows; other masks are
    redrawn until no row is fully masked. Fully masked rows follow the library's policy."""
    dt = c.dtype
    B, H = 2, 3
    L, S = (6, 6) if target == "talking_heads" else (5, 7)
    D = 4
    tensors, meta = {}, {"target": target, "mask_kind": kind, "batch": B, "heads": H, "len_q": L, "len_k": S,
                         "shapes": " ".join(BROADCAST_SHAPES)}
    if target == "sdpa":
        q, k, v = (torch.randn(B, H, n, D, dtype=dt) for n in (L, S, S))
        tensors.update({"input.query": q, "input.key": k, "input.value": v})
        meta["scale"] = "0.4"
    elif target == "mha":
        m = reinit(nn.MultiheadAttention(H * D, H, batch_first=True).to(dt))
        query, kv = torch.randn(B, L, H * D, dtype=dt), torch.randn(B, S, H * D, dtype=dt)
        tensors.update({**params(m), "input.query": query, "input.key": kv, "input.value": kv})
        meta["embed_dim"] = H * D
    else:
        m = reinit(make_masked_th()(H * D, num_heads=H).to(dt))
        x = torch.randn(B, L, H * D, dtype=dt)
        tensors.update({**params(m), "input.x": x})
        meta["embed_dim"] = H * D

    for tag in BROADCAST_SHAPES:
        shape = broadcast_shape(tag, B, H, L, S)
        for _ in range(1000):
            am = make_bool_mask(shape) if kind == "bool" else make_float_mask(shape, dt, -3, 3, 0.15)
            full = torch.isneginf(additive_bias(None, expand_mask(blocked(am), tag, B, H, L, S), B, H, L, S,
                                                torch.float64)).all(-1)
            if tag == "1_1_L_1" or not full.any():
                break
        bias = expand_mask(am if kind == "float" else torch.zeros(shape, dtype=dt).masked_fill(am, float("-inf")),
                           tag, B, H, L, S)
        tensors[f"input.{tag}.attn_mask"] = am
        if target == "sdpa":
            q64, k64, v64 = (t.double() for t in (q, k, v))
            w = softmax_policy(q64 @ k64.transpose(-1, -2) * 0.4 + bias.double())
            tensors[f"output.{tag}.output"], tensors[f"output.{tag}.attn_weights"] = (w @ v64).to(dt), w.to(dt)
        elif target == "mha":
            o, w = torch_mha_functional(m, query, kv, kv, batched=True, attn_mask=bias.reshape(B * H, L, S),
                                        need_weights=True, average_attn_weights=False)
            if full.any():
                o, w = apply_fully_masked_policy(m, o, w, full, False)
            tensors[f"output.{tag}.output"], tensors[f"output.{tag}.attn_weights"] = o, w
        else:
            tensors[f"output.{tag}.output"] = m(x, bias)
    return tensors, meta


for _target in ("sdpa", "mha", "talking_heads"):
    case(f"bcast_{_target}_bool_f32", build_broadcast, f"attn_mask of every shape that broadcasts to (B, H, L, S) = "
         f"(2, 3, L, S), and (B*H, L, S), for {_target}: bool masks (True = masked).", target=_target, kind="bool")
    case(f"bcast_{_target}_float_f64", build_broadcast, f"attn_mask of every shape that broadcasts to (B, H, L, S) = "
         f"(2, 3, L, S), and (B*H, L, S), for {_target}: float masks with -inf, in float64.", target=_target,
         kind="float")

MODULES = {SA: "self_attention", MHA: "multi_head_attention", SEP: "multi_head_attention",
           FUSED: "multi_head_attention", TH: "talking_heads", AB: "attention_block", ENC: "transformer_encoder",
           build_ops: "ops", build_sdpa: "sdpa", build_dtypes: "dtypes", build_broadcast: "mask_broadcast",
           GQA: "gqa_attention", CORE: "attention_core", TEL: "transformer_encoder_layer",
           TDL: "transformer_decoder_layer", build_linear16: "linear",
           build_sdpa16: "sdpa", build_mha16: "multi_head_attention", build_kv_int8: "kv_int8"}
MODULES.update({c.builder: MODULES[c.builder.wrapped] for c in CASES if hasattr(c.builder, "wrapped")})

REQUIRED_META = {
    "self_attention": ["embed_dim", "causal"],
    "multi_head_attention": ["embed_dim", "num_heads", "kdim", "vdim", "bias", "add_bias_kv", "add_zero_attn",
                             "layout", "need_weights", "average_attn_weights", "causal"],
    "talking_heads": ["embed_dim", "num_heads", "qkv_bias", "causal"],
    "attention_block": ["embed_dim", "num_heads", "causal"],
    "transformer_encoder": ["embed_dim", "num_heads", "ffn_dim", "causal"],
    "ops": ["eps"],
    "linear": ["in_features", "out_features", "bias"],
    "sdpa": ["scale"],
    "dtypes": [],
    "kv_int8": ["rows", "head_dim"],
    "mask_broadcast": ["target", "mask_kind", "batch", "heads", "len_q", "len_k", "shapes"],
    "gqa_attention": ["embed_dim", "num_heads", "num_kv_heads", "head_dim", "qkv_bias", "rope", "rotary_dim",
                      "rope_theta", "rope_interleaved", "sliding_window", "softcap", "causal"],
    "attention_core": ["num_heads", "num_kv_heads", "causal", "sliding_window", "softcap", "alibi", "scale"],
    "transformer_encoder_layer": ["embed_dim", "num_heads", "ffn_dim", "activation", "norm_first", "layer_norm_eps",
                                  "causal"],
    "transformer_decoder_layer": ["embed_dim", "num_heads", "ffn_dim", "activation", "norm_first", "layer_norm_eps",
                                  "causal"],
}

# Metadata that says which script and PyTorch made a file (every file has them). --verify
# does not compare them: the data is what must be fresh.
PROVENANCE = ("made_by", "script_sha256", "modules_sha256", "torch_version")

# --verify: a regenerated float output may differ from the committed one in the last bits
# when PyTorch runs on another CPU (other BLAS kernels, other summation order). Largest
# difference measured between two CPUs (Sapphire Rapids vs the machine the files were first
# made on): 9.8e-7 (float32, th_cait_f32) and 6.9e-16 (float64) of the tensor's max |value|.
# Anything the script changes on purpose moves outputs by far more.
# A bfloat16 output may move by one step of its largest value (2^-7 of it).
FRESH_TOLERANCE = {"F32": 4e-6, "F64": 1e-13, "BF16": 2.0 ** -7}


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------

def case_seed(c: Case) -> int:
    return zlib.crc32(c.name.encode("utf-8")) if c.seed is None else c.seed


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def provenance() -> Dict[str, str]:
    return {"made_by": "tests/reference/make_reference.py", "script_sha256": sha256_of(Path(__file__).resolve()),
            "modules_sha256": sha256_of(MODULES_FILE), "torch_version": torch.__version__}


def generate(c: Case, out_dir: Path = DATA_DIR) -> Path:
    torch.manual_seed(case_seed(c))
    with torch.no_grad():
        tensors, meta = c.builder(c, **c.kw)
    metadata = {"module": MODULES[c.builder], "dtype": DTYPE_NAMES[c.dtype], "description": c.description}
    metadata.update({k: s(v) for k, v in meta.items()})
    metadata.update(provenance())
    for name, t in tensors.items():
        assert t.dtype in (torch.bool, c.dtype) or c.builder is build_dtypes or (name == "output.exact" and t.dtype ==
                                                                                torch.float64), f"{c.name}: {name} has dtype {t.dtype}"
    path = out_dir / f"{c.name}.safetensors"
    write_safetensors(path, tensors, metadata)
    return path


def check(c: Case, data_dir: Path = DATA_DIR) -> int:
    path = data_dir / f"{c.name}.safetensors"
    meta, arrays = read_safetensors(path)
    module = MODULES[c.builder]
    assert meta["module"] == module and meta["dtype"] == DTYPE_NAMES[c.dtype], path
    missing = [k for k in ["module", "dtype", "description", *PROVENANCE] + REQUIRED_META[module] if k not in meta]
    assert not missing, f"{path}: missing metadata {missing}"
    case_dtype = ST_DTYPES[c.dtype][0]
    for name, a in arrays.items():
        want = "F64" if name == "output.exact" else case_dtype
        if module == "dtypes":
            continue
        assert name.split(".", 1)[0] in ("param", "input", "output"), f"{path}: bad tensor name {name}"
        if a.dtype == np.uint8:
            assert name.startswith("input.") and name.endswith("mask") and a.max(initial=0) <= 1, f"{path}: {name}"
        else:
            assert a.dtype == ST_NUMPY[want], f"{path}: {name} is {a.dtype}, case is {want}"
            a = as_float64(a.tobytes(), want)
            assert not np.isnan(a).any(), f"{path}: NaN in {name}"
            finite = np.isfinite(a) | (np.isneginf(a) if name.endswith("mask") else False)
            assert finite.all(), f"{path}: inf in {name}"
    assert any(n.startswith("output.") for n in arrays), path
    return path.stat().st_size


def header_of(path: Path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    return header.pop("__metadata__", {}), header, raw[8 + n:]


def as_float64(raw: bytes, st_dtype: str) -> np.ndarray:
    """A float tensor's bytes as float64 values (BF16: the top half of a float32)."""
    a = np.frombuffer(raw, dtype=ST_NUMPY[st_dtype])
    return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64) if st_dtype == "BF16" else a.astype(np.float64)


def compare_fresh(name: str, committed: Path, fresh: Path):
    """Problems (strings) of a committed file against a freshly made one, and the largest
    relative output difference: parameters, inputs and masks must be byte-identical, float
    outputs within FRESH_TOLERANCE of max |value|, metadata identical but for PROVENANCE."""
    (cm, ch, cd), (fm, fh, fd) = header_of(committed), header_of(fresh)
    problems, worst = [], 0.0
    for k in sorted(set(cm) | set(fm)):
        if k not in PROVENANCE and cm.get(k) != fm.get(k):
            problems.append(f"metadata {k}: committed {cm.get(k)!r}, now {fm.get(k)!r}")
    if list(ch) != list(fh):
        problems.append(f"tensors: committed {list(ch)}, now {list(fh)}")
    for t in ch:
        if t not in fh:
            continue
        (ci, fi) = ch[t], fh[t]
        if (ci["dtype"], ci["shape"]) != (fi["dtype"], fi["shape"]):
            problems.append(f"{t}: committed {ci['dtype']}{ci['shape']}, now {fi['dtype']}{fi['shape']}")
            continue
        cb, fb = cd[slice(*ci["data_offsets"])], fd[slice(*fi["data_offsets"])]
        if cb == fb:
            continue
        if not t.startswith("output.") or ci["dtype"] not in FRESH_TOLERANCE:
            problems.append(f"{t}: differs (must be identical)")
            continue
        a, b = as_float64(cb, ci["dtype"]), as_float64(fb, fi["dtype"])
        rel = float(np.abs(a - b).max() / max(np.abs(b).max(), np.finfo(np.float64).tiny))
        worst = max(worst, rel)
        if not rel <= FRESH_TOLERANCE[ci["dtype"]]:
            problems.append(f"{t}: differs by {rel:.3g} of max |value| (tolerance {FRESH_TOLERANCE[ci['dtype']]:g})")
    return problems, worst


def verify(selected) -> int:
    """Regenerates the cases into a temporary folder and compares them with the committed
    files (compare_fresh). Fails if a case has no committed file, a committed file belongs
    to no case, or a file differs."""
    torch.set_num_threads(1)
    by_name = {c.name for c in CASES}
    stale, worst, worst_case, other_script = [], 0.0, "", []
    with tempfile.TemporaryDirectory(prefix="attn_reference_") as tmp:
        for c in selected:
            committed = DATA_DIR / f"{c.name}.safetensors"
            if not committed.is_file():
                stale.append(f"{c.name}: no committed file {committed.relative_to(HERE.parents[1])}")
                continue
            problems, w = compare_fresh(c.name, committed, generate(c, Path(tmp)))
            if w > worst:
                worst, worst_case = w, c.name
            if problems:
                stale.append(f"{c.name}: " + "; ".join(problems))
            elif header_of(committed)[0].get("script_sha256") != provenance()["script_sha256"]:
                other_script.append(c.name)
    if len(selected) == len(CASES):
        stale += [f"{p.name}: committed file of no case" for p in sorted(DATA_DIR.glob("*.safetensors"))
                  if p.stem not in by_name]
    for line in stale:
        print(f"STALE {line}")
    print(f"{len(selected)} cases regenerated with PyTorch {torch.__version__}; largest output difference "
          f"{worst:.3g} of max |value| ({worst_case or '-'}); tolerance float32 {FRESH_TOLERANCE['F32']:g}, "
          f"float64 {FRESH_TOLERANCE['F64']:g}")
    if other_script:
        print(f"note: {len(other_script)} files were made by another version of make_reference.py but hold the "
              f"same data")
    if stale:
        print(f"{len(stale)} stale: regenerate with /usr/bin/python3 tests/reference/make_reference.py")
        return 1
    print("all reference files are fresh")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", nargs="*", help="only these cases (default: all)")
    ap.add_argument("--check", action="store_true", help="only read back and verify the existing files")
    ap.add_argument("--verify", action="store_true",
                    help="regenerate into a temporary folder and compare with the committed files (exit 1 if stale, "
                         f"{SKIP} if PyTorch is missing)")
    args = ap.parse_args()

    by_name = {c.name: c for c in CASES}
    unknown = [n for n in args.cases if n not in by_name]
    if unknown:
        ap.error(f"unknown case(s): {', '.join(unknown)}")
    selected = [by_name[n] for n in args.cases] if args.cases else CASES
    if args.verify:
        return verify(selected)

    if not args.check:
        torch.set_num_threads(1)
        print(f"PyTorch {torch.__version__}, modules from {ref.__file__}")
        for c in selected:
            generate(c)

    total = 0
    for c in selected:
        size = check(c)
        total += size
        print(f"{size:>10}  {c.name}.safetensors")
    print(f"{total:>10}  total ({len(selected)} files, all checked)")
    if not args.cases:
        stray = sorted(p.name for p in DATA_DIR.glob("*.safetensors") if p.stem not in by_name)
        if stray:
            print(f"warning: files of no case in {DATA_DIR}: {', '.join(stray)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
