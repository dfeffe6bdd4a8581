#!/usr/bin/python3
"""Times the same workloads with PyTorch, ONNX Runtime and attn (examples/attn_run) in one run.

For each workload it builds the PyTorch module (nn.MultiheadAttention(batch_first=True), one
of examples/torch_reference.py in this repository, nn.Linear, or the attention core as plain
torch ops), times its forward pass in eval mode under torch.no_grad() (warm-up, then the
median of --repeat calls) with torch.set_num_threads(T) and OpenBLAS set to T threads, writes
its weights and input as safetensors, runs `attn_run --threads T --repeat R` on them (median
of the forward passes, no I/O) and checks attn's output against PyTorch's. Where the workload
has an ONNX model (bench/ort/onnx_models.py: the same weights and inputs), it runs it in
ONNX Runtime through Node (bench/ort/ort_run.js, onnxruntime-node installed into --ort-dir on
first use), checks ORT's output against attn's and PyTorch's (exits 1 above 1e-4), then times
it (median of --repeat runs, timed inside Node). It prints a markdown table of times and
ratios, then times the N sweep of multi-head self-attention (E = 512, 8 heads) for PyTorch
and attn and writes a log-log plot of time vs N (PNG), and reports the peak RSS of attn_run
at N = 16384.

Run with Debian's PyTorch (1.13) and onnx (1.12), and Node.js with npm:
    apt-get install python3-torch python3-numpy python3-matplotlib libopenblas0-pthread \\
                    python3-onnx nodejs npm
    /usr/bin/python3 bench/compare.py --attn-run build/examples/attn_run/attn_run [--quick] [--no-ort]

FLOP counts (GFLOP/s columns) are those of bench/README.md.
"""
import argparse
import ctypes
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

try:
    import numpy as np
    import torch
    import torch.nn as nn
except ImportError as e:  # pragma: no cover
    sys.exit(f"compare.py: {e}; run it with /usr/bin/python3 after "
             "apt-get install python3-torch python3-numpy (cmake/install-deps.sh bench)")

sys.path.insert(0, str(REPO / "tests" / "reference"))
from make_reference import write_safetensors  # noqa: E402  (path, {name: torch tensor}, metadata)
sys.path.insert(0, str(REPO / "examples"))
import torch_reference as ref  # noqa: E402  (the PyTorch modules attn reproduces)
sys.path.insert(0, str(HERE / "ort"))
import node_ort  # noqa: E402  (onnxruntime-node: install, run ort_run.js)
try:
    import onnx_models  # noqa: E402  (the workloads' ONNX models; needs python3-onnx)
except ImportError as e:  # needed only with ORT (not with --no-ort)
    onnx_models, ONNX_IMPORT_ERROR = None, e


# ---------------------------------------------------------------------------------------
# FLOPs (bench/README.md): GEMM multiply-adds x 2; softmax, norms, activations not counted.
# ---------------------------------------------------------------------------------------

def core_flops(b, h, l, s, d, dv):
    return 2.0 * b * h * l * s * (d + dv)


def linear_flops(tokens, i, o):
    return 2.0 * tokens * i * o


def mha_flops(b, n, e, h):
    return 4 * linear_flops(b * n, e, e) + core_flops(b, h, n, n, e / h, e / h)


def self_attention_flops(b, n, e):
    return 3 * linear_flops(b * n, e, e) + core_flops(b, 1, n, n, e, e)


def talking_heads_flops(b, n, c, h):
    return (linear_flops(b * n, c, 3 * c) + linear_flops(b * n, c, c) + core_flops(b, h, n, n, c / h, c / h)
            + 2 * (2.0 * b * n * n * h * h))


def encoder_flops(b, n, c, f, h):
    return mha_flops(b, n, c, h) + linear_flops(b * n, c, f) + linear_flops(b * n, f, c)


def gqa_prefill_flops(b, n, e, h, k, d):
    """Projections to H + 2K heads and back, and the causal core (n (n + 1) / 2 pairs)."""
    return linear_flops(b * n, e, (2 * h + 2 * k) * d) + core_flops(b, h, n, (n + 1) / 2, d, d)


# ---------------------------------------------------------------------------------------
# safetensors (no safetensors package on Debian 12): written with the fixture generator's
# writer, tests/reference/make_reference.py; read with the reader below, which accepts
# files without metadata (attn_run writes none)
# ---------------------------------------------------------------------------------------

ST_NUMPY = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "BOOL": np.dtype("u1"), "BF16": np.dtype("<u2")}


def read_safetensors(path):
    """{name: numpy array} (F32, F64, BOOL, and BF16 as float32); tolerates files without __metadata__."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        a = np.frombuffer(data[b:e], dtype=ST_NUMPY[info["dtype"]]).reshape(info["shape"])
        out[name] = (a.astype(np.uint32) << 16).view(np.float32) if info["dtype"] == "BF16" else a
    return out


# ---------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------

class Workload:
    """One module at one shape, runnable by PyTorch, by attn_run and (with an OrtModel) by ORT."""

    def __init__(self, name, build, inputs, attn_args, flops, target=None, torch_call=None, ort=None,
                 dtype=torch.float32):
        self.name = name            # table label
        self.build = build          # () -> torch module (eval mode is set by the caller)
        self.inputs = inputs        # () -> dict of input tensors, as attn_run reads them
        self.attn_args = attn_args  # attn_run arguments besides files, threads, repeat
        self.flops = flops
        self.target = target        # minimum speed-up torch/attn, or None
        self.torch_call = torch_call or (lambda m, x: m(x["x"]))
        self.ort = ort              # OrtModel, or None: no ORT column
        self.dtype = dtype          # both sides compute in it (PyTorch: module.to(dtype))


class OrtModel:
    """How ORT runs a workload. build(state, feeds) -> ONNX model, from the module's state_dict
    and ORT's inputs (numpy); feeds(inputs) -> ORT's inputs from attn_run's (numpy); output(y)
    -> ORT's output in the layout of attn's and PyTorch's."""

    def __init__(self, build, feeds=None, output=None):
        self.build = build
        self.feeds = feeds or (lambda x: x)
        self.output = output or (lambda y: y)


def mha_torch_call(need_weights):
    def call(m, x):
        q = x["query"]
        if isinstance(m, nn.MultiheadAttention):
            return m(q, q, q, need_weights=need_weights)[0]
        return m(q, q, q)  # SeparateProjectionMultiHeadAttention(query, key, value)
    return call


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float32)


def nn_mha(n, e, h, b=1, target=None, need_weights=False, label=None):
    return Workload(
        label or f"multi-head ({b}, {n}, {e}), {h} heads (head_dim {e // h})",
        lambda: nn.MultiheadAttention(e, h, batch_first=True),
        lambda: {"query": randn(b, n, e)},
        ["--module", "multi_head_attention", "--embed-dim", str(e), "--num-heads", str(h)],
        mha_flops(b, n, e, h), target, mha_torch_call(need_weights),
        OrtModel(lambda state, x: onnx_models.mha_model(state, x["query"].shape, h)))


class AttentionCore(nn.Module):
    """softmax(q k^T / sqrt(D)) v in plain torch ops, as attn_run --module sdpa computes it:
    PyTorch 1.13 has no fused scaled_dot_product_attention (2.0 added it)."""

    def forward(self, query, key, value):
        scores = query @ key.transpose(-2, -1) * query.shape[-1] ** -0.5
        return torch.softmax(scores, dim=-1) @ value


def heads_to_tokens(x):
    """{name: (B, H, N, D)} -> {name: (B, N, H*D)}, the layout of ORT's MultiHeadAttention."""
    return {k: v.transpose(0, 2, 1, 3).reshape(v.shape[0], v.shape[2], -1) for k, v in x.items()}


def core(b, h, n, d):
    """The attention core on q, k, v (b, h, n, d)."""
    return Workload(
        f"attention core ({b}, {h}, {n}, {d})", AttentionCore,
        lambda: {"query": randn(b, h, n, d), "key": randn(b, h, n, d), "value": randn(b, h, n, d)},
        ["--module", "sdpa"], core_flops(b, h, n, n, d, d),
        torch_call=lambda m, x: m(x["query"], x["key"], x["value"]),
        ort=OrtModel(lambda state, x: onnx_models.core_model(x["query"].shape, x["key"].shape, x["value"].shape, h),
                     heads_to_tokens, lambda y: y.reshape(b, n, h, -1).transpose(0, 2, 1, 3)))


def linear(rows, k, n):
    """nn.Linear(k, n) with bias on x (rows, k)."""
    return Workload(
        f"linear ({rows} x {k}) x ({k} x {n}), bias", lambda: nn.Linear(k, n), lambda: {"x": randn(rows, k)},
        ["--module", "linear", "--in-features", str(k), "--out-features", str(n)], linear_flops(rows, k, n),
        ort=OrtModel(lambda state, x: onnx_models.linear_model(state, x["x"].shape)))


def in_bf16(w):
    """Workload w with both sides in bfloat16: PyTorch's module.to(torch.bfloat16) on bfloat16
    inputs, attn_run --dtype bfloat16 (no ORT column: its CPU kernels have no bfloat16)."""
    return Workload(f"{w.name}, bfloat16", w.build, w.inputs, w.attn_args + ["--dtype", "bfloat16"], w.flops,
                    None, w.torch_call, None, torch.bfloat16)


def gqa_prefill(n, e, h, k, d):
    """A Llama-3-8B-shaped attention layer over a prompt of n tokens (causal, RoPE), against HF's
    eager LlamaAttention (torch_reference.LlamaAttention, float32)."""
    return Workload(
        f"GQA prefill (1, {n}, {e}), {h} heads, {k} kv heads",
        lambda: ref.LlamaAttention(e, h, k, d, rope_theta=500000.0),
        lambda: {"x": randn(1, n, e)},
        ["--module", "gqa_attention", "--embed-dim", str(e), "--num-heads", str(h), "--num-kv-heads", str(k),
         "--head-dim", str(d), "--rope-theta", "500000"],
        gqa_prefill_flops(1, n, e, h, k, d), 2.0)


def workloads(need_weights):
    """The speed-target workloads, the attention cores and the projection GEMM that ORT is
    compared on, and every module of torch_reference.py at a typical shape."""
    nw = need_weights
    return [
        Workload("talking heads, CaiT shape (32, 784, 128), 8 heads",
                 lambda: ref.TalkingHeadAttn(dim=128, num_heads=8),
                 lambda: {"x": randn(32, 784, 128)},
                 ["--module", "talking_heads", "--embed-dim", "128", "--num-heads", "8"],
                 talking_heads_flops(32, 784, 128, 8), 20.0),
        nn_mha(1024, 64, 8, b=32, target=8.0, need_weights=nw),
        nn_mha(2048, 512, 8, b=1, target=2.5, need_weights=nw),
        nn_mha(10, 128, 8, b=64, target=1.0, need_weights=nw,
               label="multi-head (64, 10, 128), 8 heads (nn.MultiheadAttention)"),
        *(core(1, 8, n, d) for n, d in ((2048, 64), (4096, 64), (1024, 128), (4096, 8), (4096, 16))),
        linear(2048, 512, 1536),
        in_bf16(linear(2048, 512, 1536)),
        in_bf16(nn_mha(2048, 512, 8, b=1, need_weights=nw)),
        in_bf16(core(1, 8, 2048, 64)),
        gqa_prefill(2048, 4096, 32, 8, 128),
        Workload("SeparateProjectionMultiHeadAttention (64, 10, 128), 8 heads",
                 lambda: ref.SeparateProjectionMultiHeadAttention(128, 8),
                 lambda: {"query": randn(64, 10, 128)},
                 ["--module", "multi_head_attention", "--embed-dim", "128", "--num-heads", "8"],
                 mha_flops(64, 10, 128, 8), None, mha_torch_call(nw)),
        Workload("SingleHeadSelfAttention (2, 3, 4)",
                 lambda: ref.SingleHeadSelfAttention(4),
                 lambda: {"x": randn(2, 3, 4)},
                 ["--module", "self_attention", "--embed-dim", "4"],
                 self_attention_flops(2, 3, 4)),
        Workload("AttentionBlock (32, 64, 1024), 8 heads",
                 lambda: ref.AttentionBlock(64, 8),
                 lambda: {"x": randn(32, 64, 1024)},
                 ["--module", "attention_block", "--embed-dim", "64", "--num-heads", "8"],
                 mha_flops(32, 1024, 64, 8)),
        Workload("MobileViTTransformerEncoder (2, 14, 64), ffn 128, 8 heads",
                 lambda: ref.MobileViTTransformerEncoder(64, 128, 8),
                 lambda: {"x": randn(2, 14, 64)},
                 ["--module", "transformer_encoder", "--embed-dim", "64", "--ffn-dim", "128",
                  "--num-heads", "8"],
                 encoder_flops(2, 14, 64, 128, 8)),
    ]


# ---------------------------------------------------------------------------------------
# PyTorch side
# ---------------------------------------------------------------------------------------

def openblas_lib():
    """The OpenBLAS library mapped into this process, or None."""
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if "openblas" in os.path.basename(path).lower():
                return path
    return None


def check_blas():
    """Prints which BLAS PyTorch uses at run time; warns when it is not OpenBLAS."""
    info = re.findall(r"\b(BLAS_INFO=[^,\s]*|LAPACK_INFO=[^,\s]*)", torch.__config__.show())
    a = torch.randn(64, 64)
    _ = a @ a  # make sure BLAS is loaded
    lib = openblas_lib()
    installed = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "libopenblas0-pthread"],
                               capture_output=True, text=True).stdout.strip() == "install ok installed"
    print(f"PyTorch {torch.__version__}; torch.__config__.show(): {', '.join(info) or 'no BLAS_INFO'}"
          " (Debian builds against the libblas.so.3 alternative)")
    print(f"BLAS loaded at run time: {lib or 'not OpenBLAS'}")
    if not lib or not installed:
        print("WARNING: PyTorch is not using OpenBLAS (apt-get install libopenblas0-pthread); "
              "its BLAS is the slow reference implementation and the ratios are meaningless",
              file=sys.stderr)
    return lib


def set_torch_threads(threads, blas_lib):
    torch.set_num_threads(threads)
    if blas_lib:
        lib = ctypes.CDLL(blas_lib)
        lib.openblas_set_num_threads(ctypes.c_int(threads))
        got = lib.openblas_get_num_threads()
        if got != threads:
            print(f"WARNING: OpenBLAS runs {got} threads, not {threads}", file=sys.stderr)


def time_torch(module, call, inputs, repeat, warmup):
    with torch.no_grad():
        for _ in range(warmup):
            out = call(module, inputs)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = call(module, inputs)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


# ---------------------------------------------------------------------------------------
# attn side
# ---------------------------------------------------------------------------------------

# Runs argv[1:] as a child and reports its peak RSS. attn_run is not started from this
# process directly: the ru_maxrss of a child forked from a Python that holds PyTorch and
# its tensors starts at this process's high-water mark (Linux carries it over exec), so
# a small interpreter forks it instead and reports the child's own peak.
RSS_WRAPPER = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
sys.stderr.write("\\nattn_compare_maxrss_kb: %d\\n" % usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_attn(attn_run, args, weights, inputs, output, threads, repeat):
    """Runs attn_run (weights None: a module without any); returns (median forward ms, peak RSS
    of attn_run in MB)."""
    cmd = [str(attn_run), *args, *(["--weights", str(weights)] if weights else []), "--inputs", str(inputs),
           "--output", str(output), "--threads", str(threads), "--repeat", str(repeat)]
    p = subprocess.run([sys.executable, "-S", "-c", RSS_WRAPPER, *cmd], capture_output=True, text=True)
    rss = re.search(r"attn_compare_maxrss_kb: (\d+)", p.stderr)
    stderr = re.sub(r"\nattn_compare_maxrss_kb: \d+\n", "", p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{stderr}")
    for line in p.stdout.splitlines():
        if line.startswith("forward median:"):
            return float(line.split()[2]), int(rss.group(1)) / 1024.0 if rss else float("nan")
    raise RuntimeError(f"no 'forward median:' line in attn_run's output:\n{p.stdout}{stderr}")


def measure_attn(w, module, inputs, threads, opts, workdir):
    """attn_run on the module's weights and the inputs: ({attn_ms, attn_rss_mb} or {attn_error},
    attn's output or None)."""
    wfile, xfile, yfile = workdir / "weights.safetensors", workdir / "inputs.safetensors", workdir / "out.safetensors"
    state = module.state_dict()
    if state:  # the attention core has no weights
        write_safetensors(wfile, state, {})
    # Self-attention: only `query` (attn_run then uses it as key and value, as PyTorch
    # gets the same tensor three times). attn_run's first forward pass is its warm-up.
    write_safetensors(xfile, inputs, {})
    asks_weights = opts.need_weights and isinstance(module, nn.MultiheadAttention)
    args = list(w.attn_args) + (["--need-weights"] if asks_weights else [])
    try:
        ms, rss = run_attn(opts.attn_run, args, wfile if state else None, xfile, yfile, threads, opts.repeat)
        return {"attn_ms": ms, "attn_rss_mb": rss}, output_tensor(yfile)
    except RuntimeError as e:
        print(f"WARNING: {w.name}: {e}", file=sys.stderr)
        return {"attn_error": str(e)}, None
    finally:
        for f in (wfile, xfile, yfile):
            f.unlink(missing_ok=True)


def output_tensor(path):
    tensors = read_safetensors(path)
    for name in ("output", "y", "out"):
        if name in tensors:
            return tensors[name]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise RuntimeError(f"{path}: which tensor is the output? {sorted(tensors)}")


TOLERANCE = 1e-4  # max relative difference accepted between two sides' outputs
# bfloat16 outputs: two steps of bfloat16 at the largest value (2^-6 of it). PyTorch rounds
# the logits to bfloat16 before its softmax (attn keeps them in float32): on the attention
# core (1, 8, 2048, 64) the two differ by 9.5e-3 (tests/test_ops.cpp measures both against
# float64: attn's error is the smaller).
TOLERANCES = {torch.float32: TOLERANCE, torch.bfloat16: 2.0 ** -6}


def rel_diff(ours, ref):
    """max|ours - ref| / max|ref| (NaN if the shapes differ)."""
    ref = ref.detach().numpy() if torch.is_tensor(ref) else ref
    if ours.shape != ref.shape:
        return float("nan")
    scale = max(float(np.abs(ref).max()), 1e-30)
    return float(np.abs(ours.astype(np.float64) - ref).max()) / scale


# ---------------------------------------------------------------------------------------
# ORT side (bench/ort/)
# ---------------------------------------------------------------------------------------

def check_ort(name, ort_out, outputs):
    """ORT's max relative difference to each side's output ({side: array}); exits (status 1)
    when one exceeds TOLERANCE."""
    if not outputs:
        print(f"WARNING: {name}: no PyTorch or attn output to check ORT's against", file=sys.stderr)
    diffs = {side: rel_diff(ort_out, out) for side, out in outputs.items()}
    bad = [f"{side}'s by {d:.2e}" for side, d in diffs.items() if not d <= TOLERANCE]
    if bad:
        sys.exit(f"compare.py: {name}: ORT's output differs from {' and '.join(bad)} (max relative "
                 f"difference; limit {TOLERANCE:g}): its ONNX model does not compute the same thing")
    return diffs


def measure_ort(w, module, inputs, threads, opts, workdir, outputs):
    """Runs the workload's ONNX model (the module's weights, the same inputs) once in ORT, checks
    its output against `outputs`, then times it: {ort_ms, ort_rel_diff: {side: diff}}."""
    feeds = w.ort.feeds({k: v.numpy() for k, v in inputs.items()})
    state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    model, xfile, yfile = workdir / "model.onnx", workdir / "ort_inputs.safetensors", workdir / "ort_out.safetensors"
    onnx_models.save(w.ort.build(state, feeds), model)
    write_safetensors(xfile, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}, {})
    try:
        opts.ort.run(model, xfile, threads, output=yfile)
        diffs = check_ort(w.name, w.ort.output(output_tensor(yfile)), outputs)
        timing = opts.ort.run(model, xfile, threads, repeat=opts.repeat, warmup=opts.warmup)
    except node_ort.OrtFailed as e:
        sys.exit(f"compare.py: {w.name}: {e}")
    finally:
        for f in (model, xfile, yfile):
            f.unlink(missing_ok=True)
    return {"ort_ms": timing["median_ms"], "ort_rel_diff": diffs}


# ---------------------------------------------------------------------------------------
# One workload on all sides
# ---------------------------------------------------------------------------------------

def with_nonzero_biases(module, scale=0.1):
    """Gives the biases that PyTorch initialises to zero (nn.MultiheadAttention's in_proj_bias
    and out_proj.bias, LayerNorm's) small random values, so that the output checks see whether
    each side adds them. Returns the module."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") and not p.any():
                p.uniform_(-scale, scale)
    return module


def check_attn(name, attn_out, torch_out, tolerance):
    """attn's max relative difference to PyTorch's output; warns above the tolerance."""
    d = rel_diff(attn_out, torch_out)
    if not d <= tolerance:
        print(f"WARNING: {name}: attn's output differs from PyTorch's by {d:.2e} "
              "(relative to the largest value): not the same computation?", file=sys.stderr)
    return d


def measure(w, threads, opts, blas_lib, workdir, run_torch=True, run_ort=True):
    torch.manual_seed(0)
    module = with_nonzero_biases(w.build().eval()).to(w.dtype)
    inputs = {k: v.to(w.dtype) if v.is_floating_point() else v for k, v in w.inputs().items()}
    result = {"workload": w.name, "threads": threads, "flops": w.flops, "target": w.target,
              "dtype": str(w.dtype).replace("torch.", "")}
    outputs = {}  # side -> its output (numpy), for the checks
    if run_torch:
        set_torch_threads(threads, blas_lib)
        result["torch_ms"], out = time_torch(module, w.torch_call, inputs, opts.repeat, opts.warmup)
        outputs["PyTorch"] = out.detach().float().numpy() if w.dtype == torch.bfloat16 else out.detach().numpy()
    if opts.attn_run:
        fields, out = measure_attn(w, module, inputs, threads, opts, workdir)
        result.update(fields)
        if out is not None:
            outputs["attn"] = out
            if "PyTorch" in outputs:
                result["rel_diff"] = check_attn(w.name, out, outputs["PyTorch"], TOLERANCES[w.dtype])
    if opts.ort and w.ort and run_ort:
        result.update(measure_ort(w, module, inputs, threads, opts, workdir, outputs))
    return result


def fmt_ms(v):
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def ratio(slow, fast):
    return slow / fast if slow and fast else None


def fmt_ratio(r):
    return f"{r:.2f}x" if r else "-"


def target_cell(target, speedup):
    if target is None:
        return "-"
    cell = f">= {target:g}x" if target > 1 else "faster"
    if speedup is not None:
        cell += " (met)" if speedup >= target and speedup > 1 else " (NOT met)"
    return cell


def max_rel_diff(r):
    """The largest of the checked differences (attn vs PyTorch, ORT vs attn and vs PyTorch)."""
    diffs = [r["rel_diff"]] if "rel_diff" in r else []
    diffs += r.get("ort_rel_diff", {}).values()
    return max(diffs) if diffs else None


def print_table(results, peaks):
    print("| workload | threads | PyTorch ms | ORT ms | attn ms | attn vs ORT | attn vs PyTorch | target "
          "| attn GFLOP/s | attn % of peak | max rel diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in results:
        t, o, a = r.get("torch_ms"), r.get("ort_ms"), r.get("attn_ms")
        gf = r["flops"] / (a * 1e-3) * 1e-9 if a else None
        peak = peaks.get(r.get("dtype", "float32"), {}).get(r["threads"])
        diff = max_rel_diff(r)
        cells = [r["workload"], str(r["threads"]), fmt_ms(t), fmt_ms(o), fmt_ms(a),
                 fmt_ratio(ratio(o, a)), fmt_ratio(ratio(t, a)), target_cell(r["target"], ratio(t, a)),
                 f"{gf:.1f}" if gf else "-",
                 f"{100 * gf / peak:.0f}%" if gf and peak else "-",
                 f"{diff:.1e}" if diff is not None else "-"]
        print("| " + " | ".join(cells) + " |")


def print_scaling(results, workload_names, lo, hi):
    print(f"\nthread scaling, {hi} threads vs {lo} (target >= 1.9x for 2 vs 1):")
    print("| workload | attn speed-up | ORT speed-up | PyTorch speed-up |")
    print("|---|---:|---:|---:|")
    for name in workload_names:
        a = {r["threads"]: r for r in results if r["workload"] == name}
        cells = [fmt_ratio(ratio(a[lo].get(key), a[hi].get(key))) for key in ("attn_ms", "ort_ms", "torch_ms")]
        print(f"| {name} | " + " | ".join(cells) + " |")


def measure_peaks(peak_bin, thread_counts):
    if not peak_bin:
        return {}
    try:
        out = subprocess.run([str(peak_bin), "--json", "--threads=" + ",".join(map(str, thread_counts))],
                             capture_output=True, text=True, check=True).stdout
        data = json.loads(out)
        print(f"FMA peak ({data['isa']}): " +
              ", ".join(f"{p['threads']} thread(s) {p['gflops']:.0f} GFLOP/s" for p in data["peak"]))
        peaks = {"float32": {p["threads"]: p["gflops"] for p in data["peak"]}}
        if data.get("bf16_peak"):
            print("bfloat16 dot-product peak (vdpbf16ps): " +
                  ", ".join(f"{p['threads']} thread(s) {p['gflops']:.0f} GFLOP/s" for p in data["bf16_peak"]))
            peaks["bfloat16"] = {p["threads"]: p["gflops"] for p in data["bf16_peak"]}
        return peaks
    except (OSError, subprocess.CalledProcessError, ValueError) as e:
        print(f"WARNING: peak measurement failed: {e}", file=sys.stderr)
        return {}


# ---------------------------------------------------------------------------------------
# N sweep and plot
# ---------------------------------------------------------------------------------------

def plot(sweep, path, e, h):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 5))
    for impl, style in (("torch_ms", "o--"), ("attn_ms", "s-")):
        for threads in sorted({r["threads"] for r in sweep}):
            pts = [(r["n"], r[impl]) for r in sweep if r["threads"] == threads and r.get(impl)]
            if pts:
                label = ("PyTorch " + torch.__version__.split("a")[0] if impl == "torch_ms" else "attn")
                ax.plot(*zip(*pts), style, label=f"{label}, {threads} thread(s)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ns = sorted({r["n"] for r in sweep})
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("forward time (ms)")
    ax.set_title(f"multi-head self-attention, (1, N, {e}), {h} heads (head_dim {e // h})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_rows(sweep):
    print("| N | threads | PyTorch ms | attn ms | PyTorch/attn | attn peak RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in sweep:
        t, a = r.get("torch_ms"), r.get("attn_ms")
        cells = [str(r["n"]), str(r["threads"]), fmt_ms(t), fmt_ms(a), fmt_ratio(ratio(t, a)),
                 f"{r['attn_rss_mb']:.0f}" if "attn_rss_mb" in r else "-"]
        print("| " + " | ".join(cells) + " |")


# ---------------------------------------------------------------------------------------

def find_attn_run(arg):
    if arg:
        p = Path(arg)
        if not p.is_file():
            sys.exit(f"compare.py: --attn-run {arg}: no such file")
        return p
    for build in ("build-bench", "build"):
        for rel in ("examples/attn_run/attn_run", "examples/attn_run", "examples/attn_run/attn_run.exe"):
            p = REPO / build / rel
            if p.is_file() and os.access(p, os.X_OK):
                return p
    found = shutil.which("attn_run")
    return Path(found) if found else None


def setup_ort(opts):
    """Sets opts.ort (a NodeOrt; None with --no-ort), installing onnxruntime-node into --ort-dir
    if it is not there. Returns its version, or None."""
    opts.ort = None
    if opts.no_ort:
        return None
    if onnx_models is None:
        sys.exit(f"compare.py: {ONNX_IMPORT_ERROR}: the ONNX models for ORT need Debian's python3-onnx "
                 "(apt-get install -y python3-onnx), or pass --no-ort")
    try:
        version = node_ort.ensure_installed(opts.ort_dir)
    except node_ort.OrtUnavailable as e:
        sys.exit(f"compare.py: {e}")
    opts.ort = node_ort.NodeOrt(opts.ort_dir)
    return version


def parse_options():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attn-run", help="path of attn_run (default: <repo>/build-bench or build/examples/attn_run/)")
    ap.add_argument("--no-attn", action="store_true", help="time PyTorch only")
    ap.add_argument("--no-ort", action="store_true", help="do not run ONNX Runtime")
    ap.add_argument("--ort-dir", type=Path, default=REPO / "build-bench" / "ort",
                    help="where onnxruntime-node is installed (npm, on first use; default %(default)s)")
    ap.add_argument("--peak", help="path of bench/peak (default: next to attn_run's build dir)")
    ap.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1],
                    help="thread counts, each run for all sides (default: all cores = %(default)s)")
    ap.add_argument("--repeat", type=int, default=None, help="timed calls per workload (default 10; quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="PyTorch warm-up calls, and ORT's after its first run (default 2; quick 1)")
    ap.add_argument("--quick", action="store_true",
                    help="fewer calls, sweep N <= 2048, no N = 16384 memory case")
    ap.add_argument("--only", help="run only workloads whose name contains this text")
    ap.add_argument("--need-weights", action="store_true",
                    help="ask both sides for the attention weights (nn.MultiheadAttention workloads)")
    ap.add_argument("--sweep", default=None,
                    help="comma-separated N for the plot (default 128,...,16384; quick 128,...,2048); 'none' to skip")
    ap.add_argument("--sweep-embed", type=int, default=512, help="sweep embed dim (default 512)")
    ap.add_argument("--sweep-heads", type=int, default=8, help="sweep heads (default 8)")
    ap.add_argument("--torch-max-n", type=int, default=8192,
                    help="largest N PyTorch runs in the sweep: it stores 2-3 (H, N, N) float maps, "
                         "8.6 GB each at N = 16384 (default %(default)s)")
    ap.add_argument("--plot", default="compare_sweep.png", help="PNG path (default %(default)s)")
    ap.add_argument("--json", help="also write all results to this JSON file")
    opts = ap.parse_args()
    opts.repeat = opts.repeat or (3 if opts.quick else 10)
    opts.warmup = opts.warmup if opts.warmup is not None else (1 if opts.quick else 2)
    if opts.sweep is None:
        top = 2048 if opts.quick else 16384
        opts.sweep = [n for n in (128, 256, 512, 1024, 2048, 4096, 8192, 16384) if n <= top]
    elif opts.sweep == "none":
        opts.sweep = []
    else:
        opts.sweep = [int(n) for n in opts.sweep.split(",")]
    return opts


def main():
    opts = parse_options()
    opts.attn_run = None if opts.no_attn else find_attn_run(opts.attn_run)
    if opts.attn_run is None and not opts.no_attn:
        print("WARNING: attn_run not found (build it: cmake --build <build> --target attn_run, or pass "
              "--attn-run); timing PyTorch only", file=sys.stderr)
    peak_bin = opts.peak
    if peak_bin is None and opts.attn_run is not None:
        cand = opts.attn_run.resolve().parents[2 if opts.attn_run.parent.name == "attn_run" else 1] / "bench" / "peak"
        peak_bin = cand if cand.is_file() else None

    ort_version = setup_ort(opts)
    blas_lib = check_blas()
    print(f"attn_run: {opts.attn_run or '-'}; ONNX Runtime: "
          f"{f'onnxruntime-node {ort_version} in {opts.ort_dir}' if opts.ort else '-'}; threads {opts.threads}; "
          f"{opts.repeat} timed calls, median (attn after 1 untimed call, PyTorch after {opts.warmup}, "
          f"ORT after {1 + opts.warmup})")
    peaks = measure_peaks(peak_bin, opts.threads)
    print()

    results, sweep = [], []
    with tempfile.TemporaryDirectory(prefix="attn_compare_") as tmp:
        workdir = Path(tmp)
        selected = [w for w in workloads(opts.need_weights) if not opts.only or opts.only in w.name]
        for threads in opts.threads:
            for w in selected:
                r = measure(w, threads, opts, blas_lib, workdir)
                results.append(r)
                print(f"  {w.name}, {threads} thread(s): PyTorch {fmt_ms(r.get('torch_ms'))} ms, "
                      f"ORT {fmt_ms(r.get('ort_ms'))} ms, attn {fmt_ms(r.get('attn_ms'))} ms", flush=True)
        print()
        print_table(results, peaks)

        if len(opts.threads) > 1:
            print_scaling(results, [w.name for w in selected], min(opts.threads), max(opts.threads))

        if opts.sweep:
            e, h = opts.sweep_embed, opts.sweep_heads
            print(f"\nN sweep: multi-head self-attention (1, N, {e}), {h} heads; PyTorch up to N = "
                  f"{opts.torch_max_n}")
            for threads in opts.threads:
                for n in opts.sweep:
                    w = nn_mha(n, e, h, need_weights=opts.need_weights)
                    reps = opts.repeat if n <= 4096 else max(1, min(opts.repeat, 3))
                    sub = argparse.Namespace(**{**vars(opts), "repeat": reps, "warmup": min(opts.warmup, 1)})
                    r = measure(w, threads, sub, blas_lib, workdir, run_torch=n <= opts.torch_max_n,
                                run_ort=False)
                    r["n"] = n
                    sweep.append(r)
                    print(f"  N = {n}, {threads} thread(s): PyTorch {fmt_ms(r.get('torch_ms'))} ms, "
                          f"attn {fmt_ms(r.get('attn_ms'))} ms", flush=True)
            print()
            sweep_rows(sweep)
            plot(sweep, opts.plot, e, h)
            print(f"\nplot: {Path(opts.plot).resolve()}")
            big = [r for r in sweep if r["n"] == 16384 and "attn_rss_mb" in r]
            for r in big:
                print(f"peak RSS of attn_run, self-attention N = 16384, {h} heads, head_dim {e // h}, "
                      f"{r['threads']} thread(s): {r['attn_rss_mb']:.0f} MB (target < 600 MB; dense "
                      f"(H, N, N) float maps would be {h * 16384 * 16384 * 4 / 1e9:.1f} GB)")

    if opts.json:
        Path(opts.json).write_text(json.dumps({"torch": torch.__version__, "ort": ort_version, "blas": blas_lib, "peaks": peaks,
                                               "results": results, "sweep": sweep}, indent=1))
        print(f"results: {Path(opts.json).resolve()}")


if __name__ == "__main__":
    main()
