#!/usr/bin/python3
"""Decode steps of a Llama-3-8B-shaped attention layer, PyTorch and attn side by side in one run.

The layer: E 4096, 32 query heads, 8 key/value heads, head_dim 128, RoPE (theta 500000), no
biases. One decode step = one new token per sequence at context `ctx` (the cache holds ctx
tokens), for ctx 512 / 4096 / 16384 and batch 1 and 8.

- PyTorch: examples/torch_reference.py's LlamaAttention.step, HF's eager LlamaAttention as
  it decodes (torch.cat onto the cache, repeat_kv), float32, under torch.no_grad() with torch.set_num_threads(T) and OpenBLAS
  at T threads; median of --repeat steps, each from the same cache.
- attn: bench_decoding's BM_DecodeStep (GroupedQueryAttention::forward with a KVCache, the
  step appended and rolled back), which also reports bytes read per step (weights + cache)
  and the memory read bandwidth it measures itself (BM_ReadBandwidth).

Both sides are checked against each other first: a step at a small context with the same
weights must give the same output (attn_run --module gqa_attention --incremental).

    /usr/bin/python3 bench/compare_decoding.py --bench build/bench/bench_decoding [--quick]
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402  (BLAS check, thread setting, attn_run runner, safetensors; torch_reference)
import torch  # noqa: E402

LAYER = dict(hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0)
ATTN_RUN_FLAGS = ["--module", "gqa_attention", "--embed-dim", "4096", "--num-heads", "32", "--num-kv-heads", "8",
                  "--head-dim", "128", "--rope-theta", "500000"]


def torch_step_ms(layer, batch, ctx, repeat):
    """Median time of one HF-style decode step at context ctx."""
    k = torch.randn(batch, LAYER["num_kv_heads"], ctx, LAYER["head_dim"])
    past = (k, torch.randn_like(k))
    x = torch.randn(batch, 1, LAYER["hidden_size"])
    times = []
    with torch.no_grad():
        layer.step(x, past)  # warm-up
        for _ in range(repeat):
            t0 = time.perf_counter()
            layer.step(x, past)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def attn_steps(bench, threads, quick):
    """{(batch, ctx): counters} of BM_DecodeStep, and the read bandwidth in GB/s."""
    filt = "BM_ReadBandwidth|BM_DecodeStep/E:4096/.*" + ("/ctx:(512|4096)/" if quick else "")
    out = subprocess.run([str(bench), f"--threads={threads}", f"--benchmark_filter={filt}",
                          "--benchmark_format=json"], capture_output=True, text=True, check=True).stdout
    steps, bandwidth = {}, None
    for b in json.loads(out)["benchmarks"]:
        if b["name"].startswith("BM_ReadBandwidth"):
            bandwidth = b["read_GB/s"]
        else:
            args = dict(part.split(":") for part in b["name"].split("/")[1:] if ":" in part)
            steps[(int(args["B"]), int(args["ctx"]))] = b
    return steps, bandwidth


def check_same_output(attn_run, layer, workdir):
    """attn_run's incremental gqa_attention equals the PyTorch layer's, token by token."""
    x = torch.randn(1, 6, LAYER["hidden_size"])
    with torch.no_grad():
        past, outs = None, []
        for t in range(x.shape[1]):
            y, past = layer.step(x[:, t:t + 1], past)
            outs.append(y)
        want = torch.cat(outs, dim=1)
    w, i, o = workdir / "w.safetensors", workdir / "x.safetensors", workdir / "y.safetensors"
    compare.write_safetensors(w, layer.state_dict(), {})
    compare.write_safetensors(i, {"x": x}, {})
    compare.run_attn(attn_run, ATTN_RUN_FLAGS + ["--incremental", "1"], w, i, o, 2, 1)
    d = compare.rel_diff(compare.output_tensor(o), want)
    print(f"attn vs PyTorch, 6 tokens decoded one at a time: max relative difference {d:.1e}")
    if not d <= compare.TOLERANCE:
        sys.exit(f"compare_decoding.py: attn's decode output differs from PyTorch's by {d:.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, help="path of bench_decoding")
    ap.add_argument("--attn-run", help="path of attn_run (default: found as compare.py finds it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="contexts 512 and 4096 only")
    opts = ap.parse_args()
    blas = compare.check_blas()
    compare.set_torch_threads(opts.threads, blas)
    torch.manual_seed(0)
    layer = compare.ref.LlamaAttention(**LAYER).eval()
    attn_run = compare.find_attn_run(opts.attn_run)
    with tempfile.TemporaryDirectory(prefix="attn_decode_") as tmp:
        check_same_output(attn_run, layer, Path(tmp))
    steps, bandwidth = attn_steps(opts.bench, opts.threads, opts.quick)
    print(f"\nread bandwidth (bench_decoding, {opts.threads} threads): {bandwidth:.1f} GB/s\n")
    print("| batch | context | PyTorch ms/step | attn ms/step | attn vs PyTorch | attn GB/s | % of read bandwidth |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for (batch, ctx), r in sorted(steps.items()):
        t = torch_step_ms(layer, batch, ctx, opts.repeat if ctx <= 4096 else 3)
        a = r["ms/step"]
        print(f"| {batch} | {ctx} | {t:.2f} | {a:.2f} | {t / a:.2f}x | {r['GB/s']:.1f} | {100 * r['bw_frac']:.0f}% |",
              flush=True)


if __name__ == "__main__":
    main()
