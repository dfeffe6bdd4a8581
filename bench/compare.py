#!/usr/bin/python3
"""Times the same workloads with PyTorch and with attn (examples/attn_run) in one run.

For each workload it builds the PyTorch module (nn.MultiheadAttention(batch_first=True), or
one of examples/torch_reference.py in this repository), times its forward pass in eval
mode under torch.no_grad() (warm-up, then the median of --repeat calls) with
torch.set_num_threads(T) and OpenBLAS set to T threads, writes its weights and input as
safetensors, runs `attn_run --threads T --repeat R` on them (median of the forward passes,
no I/O), checks attn's output against PyTorch's, and prints a markdown table of times and
ratios. It then times the N sweep of multi-head self-attention (E = 512, 8 heads) and writes
a log-log plot of time vs N (PNG), and reports the peak RSS of attn_run at N = 16384.

Run with Debian's PyTorch (1.13):
    apt-get install python3-torch python3-numpy python3-matplotlib libopenblas0-pthread
    /usr/bin/python3 bench/compare.py --attn-run build/examples/attn_run/attn_run [--quick]

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


# ---------------------------------------------------------------------------------------
# safetensors (no safetensors package on Debian 12): written with the fixture generator's
# writer, tests/reference/make_reference.py; read with the reader below, which accepts
# files without metadata (attn_run writes none)
# ---------------------------------------------------------------------------------------

ST_NUMPY = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "BOOL": np.dtype("u1")}


def read_safetensors(path):
    """{name: numpy array} (F32, F64, BOOL); tolerates files without __metadata__."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype=ST_NUMPY[info["dtype"]]).reshape(info["shape"])
    return out


# ---------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------

class Workload:
    """One module at one shape, runnable by PyTorch and by attn_run."""

    def __init__(self, name, build, inputs, attn_args, flops, target=None, torch_call=None):
        self.name = name            # table label
        self.build = build          # () -> torch module (eval mode is set by the caller)
        self.inputs = inputs        # () -> dict of input tensors, as attn_run reads them
        self.attn_args = attn_args  # attn_run arguments besides files, threads, repeat
        self.flops = flops
        self.target = target        # minimum speed-up torch/attn, or None
        self.torch_call = torch_call or (lambda m, x: m(x["x"]))


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
        mha_flops(b, n, e, h), target, mha_torch_call(need_weights))


def workloads(need_weights):
    """The speed-target workloads and every module of torch_reference.py at a typical shape."""
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
    """Runs attn_run; returns (median forward ms, peak RSS of attn_run in MB)."""
    cmd = [str(attn_run), *args, "--weights", str(weights), "--inputs", str(inputs),
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


def output_tensor(path):
    tensors = read_safetensors(path)
    for name in ("output", "y", "out"):
        if name in tensors:
            return tensors[name]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise RuntimeError(f"{path}: which tensor is the output? {sorted(tensors)}")


def rel_diff(ours, ref):
    ref = ref.detach().numpy() if torch.is_tensor(ref) else ref
    if ours.shape != ref.shape:
        return float("nan")
    scale = max(float(np.abs(ref).max()), 1e-30)
    return float(np.abs(ours.astype(np.float64) - ref).max()) / scale


# ---------------------------------------------------------------------------------------
# One workload on both sides
# ---------------------------------------------------------------------------------------

def measure(w, threads, opts, blas_lib, workdir, run_torch=True):
    torch.manual_seed(0)
    module = w.build().eval()
    inputs = w.inputs()
    result = {"workload": w.name, "threads": threads, "flops": w.flops, "target": w.target}
    ref = None
    if run_torch:
        set_torch_threads(threads, blas_lib)
        result["torch_ms"], ref = time_torch(module, w.torch_call, inputs, opts.repeat, opts.warmup)
    if opts.attn_run:
        wfile, xfile, yfile = workdir / "weights.safetensors", workdir / "inputs.safetensors", workdir / "out.safetensors"
        write_safetensors(wfile, module.state_dict(), {})
        # Self-attention: only `query` (attn_run then uses it as key and value, as PyTorch
        # gets the same tensor three times). attn_run's first forward pass is its warm-up.
        write_safetensors(xfile, inputs, {})
        asks_weights = opts.need_weights and isinstance(module, nn.MultiheadAttention)
        args = list(w.attn_args) + (["--need-weights"] if asks_weights else [])
        try:
            result["attn_ms"], result["attn_rss_mb"] = run_attn(opts.attn_run, args, wfile, xfile, yfile, threads,
                                                                 opts.repeat)
        except RuntimeError as e:
            print(f"WARNING: {w.name}: {e}", file=sys.stderr)
            result["attn_error"] = str(e)
        if ref is not None and "attn_ms" in result:
            result["rel_diff"] = rel_diff(output_tensor(yfile), ref)
            if not result["rel_diff"] <= 1e-4:
                print(f"WARNING: {w.name}: attn's output differs from PyTorch's by {result['rel_diff']:.2e} "
                      "(relative to the largest value): not the same computation?", file=sys.stderr)
        for f in (wfile, xfile, yfile):
            f.unlink(missing_ok=True)
    return result


def fmt_ms(v):
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def print_table(results, peaks):
    print("| workload | threads | PyTorch ms | attn ms | PyTorch/attn | target | attn GFLOP/s | attn % of peak "
          "| max rel diff |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in results:
        t, a = r.get("torch_ms"), r.get("attn_ms")
        ratio = t / a if t and a else None
        target = "-"
        if r["target"] is not None:
            target = f">= {r['target']:g}x" if r["target"] > 1 else "faster"
            if ratio is not None:
                target += " (met)" if ratio >= r["target"] and ratio > 1 else " (NOT met)"
        gf = r["flops"] / (a * 1e-3) * 1e-9 if a else None
        peak = peaks.get(r["threads"])
        cells = [r["workload"], str(r["threads"]), fmt_ms(t), fmt_ms(a),
                 f"{ratio:.2f}x" if ratio else "-", target,
                 f"{gf:.1f}" if gf else "-",
                 f"{100 * gf / peak:.0f}%" if gf and peak else "-",
                 f"{r['rel_diff']:.1e}" if "rel_diff" in r else "-"]
        print("| " + " | ".join(cells) + " |")


def measure_peaks(peak_bin, thread_counts):
    if not peak_bin:
        return {}
    try:
        out = subprocess.run([str(peak_bin), "--json", "--threads=" + ",".join(map(str, thread_counts))],
                             capture_output=True, text=True, check=True).stdout
        data = json.loads(out)
        print(f"FMA peak ({data['isa']}): " +
              ", ".join(f"{p['threads']} thread(s) {p['gflops']:.0f} GFLOP/s" for p in data["peak"]))
        return {p["threads"]: p["gflops"] for p in data["peak"]}
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
        cells = [str(r["n"]), str(r["threads"]), fmt_ms(t), fmt_ms(a), f"{t / a:.2f}x" if t and a else "-",
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attn-run", help="path of attn_run (default: <repo>/build-bench or build/examples/attn_run/)")
    ap.add_argument("--no-attn", action="store_true", help="time PyTorch only")
    ap.add_argument("--peak", help="path of bench/peak (default: next to attn_run's build dir)")
    ap.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1],
                    help="thread counts, each run for both (default: all cores = %(default)s)")
    ap.add_argument("--repeat", type=int, default=None, help="timed calls per workload (default 10; quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="PyTorch warm-up calls (default 2; quick 1)")
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

    opts.attn_run = None if opts.no_attn else find_attn_run(opts.attn_run)
    if opts.attn_run is None and not opts.no_attn:
        print("WARNING: attn_run not found (build it: cmake --build <build> --target attn_run, or pass "
              "--attn-run); timing PyTorch only", file=sys.stderr)
    peak_bin = opts.peak
    if peak_bin is None and opts.attn_run is not None:
        cand = opts.attn_run.resolve().parents[2 if opts.attn_run.parent.name == "attn_run" else 1] / "bench" / "peak"
        peak_bin = cand if cand.is_file() else None

    blas_lib = check_blas()
    print(f"attn_run: {opts.attn_run or '-'}; threads {opts.threads}; {opts.repeat} timed calls, "
          f"median (PyTorch after {opts.warmup} warm-up calls)")
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
                      f"attn {fmt_ms(r.get('attn_ms'))} ms", flush=True)
        print()
        print_table(results, peaks)

        if len(opts.threads) > 1 and opts.attn_run:
            lo, hi = min(opts.threads), max(opts.threads)
            print(f"\nthread scaling, {hi} threads vs {lo} (target >= 1.9x for 2 vs 1):")
            print("| workload | attn speed-up | PyTorch speed-up |")
            print("|---|---:|---:|")
            for w in selected:
                a = {r["threads"]: r for r in results if r["workload"] == w.name}
                def speedup(key):
                    slow, fast = a[lo].get(key), a[hi].get(key)
                    return slow / fast if slow and fast else None
                sa, st = speedup("attn_ms"), speedup("torch_ms")
                print(f"| {w.name} | {f'{sa:.2f}x' if sa else '-'} | {f'{st:.2f}x' if st else '-'} |")

        if opts.sweep:
            e, h = opts.sweep_embed, opts.sweep_heads
            print(f"\nN sweep: multi-head self-attention (1, N, {e}), {h} heads; PyTorch up to N = "
                  f"{opts.torch_max_n}")
            for threads in opts.threads:
                for n in opts.sweep:
                    w = nn_mha(n, e, h, need_weights=opts.need_weights)
                    reps = opts.repeat if n <= 4096 else max(1, min(opts.repeat, 3))
                    sub = argparse.Namespace(**{**vars(opts), "repeat": reps, "warmup": min(opts.warmup, 1)})
                    r = measure(w, threads, sub, blas_lib, workdir, run_torch=n <= opts.torch_max_n)
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
        Path(opts.json).write_text(json.dumps({"torch": torch.__version__, "blas": blas_lib, "peaks": peaks,
                                               "results": results, "sweep": sweep}, indent=1))
        print(f"results: {Path(opts.json).resolve()}")


if __name__ == "__main__":
    main()
