"""ctest driver for attn_run (registered in examples/attn_run/CMakeLists.txt).

    e2e_test.py case ATTN_RUN WORKDIR EXPORT_ARGS...
        examples/export_weights.py EXPORT_ARGS --out-dir WORKDIR --run: PyTorch exports a
        module, attn_run runs it, the outputs are compared. Exit 77 (ctest: skipped) with
        the reason printed when this Python has no PyTorch or NumPy.
    e2e_test.py errors ATTN_RUN WORKDIR
        attn_run's failures: exit status, a one-line message on stderr, no output file.
        Needs neither PyTorch nor NumPy (the files are written with struct).
    e2e_test.py dtypes ATTN_RUN WORKDIR
        --dtype bfloat16 and float16 against PyTorch: linear in bfloat16 against PyTorch's own
        bfloat16 nn.Linear, in float16 against the float64 product of the float16 values
        (PyTorch 1.13 has no float16 matmul on CPU); multi_head_attention in both against the
        float64 module on the rounded weights and inputs. Float32 files, converted on load; the
        output must be in the --dtype. Exit 77 without PyTorch, as `case`.
    e2e_test.py lse ATTN_RUN WORKDIR
        --module sdpa --return-lse against PyTorch's float64 softmax and torch.logsumexp of the
        masked logits, in float32 and (lse stays float32) bfloat16. Exit 77 without PyTorch.
    e2e_test.py packed ATTN_RUN WORKDIR
        Packed sequences (cu_seqlens): gqa_attention against examples/torch_reference.py's
        LlamaAttention and causal multi_head_attention against nn.MultiheadAttention, each
        PyTorch sequence run alone. Exit 77 without PyTorch.
"""
import copy
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

EXPORT = Path(__file__).resolve().parents[1] / "export_weights.py"
SKIP = 77


def run_case(attn_run, workdir, export_args):
    try:
        import numpy  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        print(f"SKIPPED: {sys.executable} cannot import PyTorch/NumPy ({e}); "
              "install python3-torch python3-numpy to run the end-to-end check")
        return SKIP
    shutil.rmtree(workdir, ignore_errors=True)
    args = [*export_args, "--out-dir", str(workdir), "--attn-run", attn_run, "--run"]
    print("+ export_weights.py", " ".join(args), flush=True)
    sys.path.insert(0, str(EXPORT.parent))
    import export_weights  # in this process: PyTorch is imported once
    return export_weights.main(args)


# ----------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------

def write_st(path, tensors):
    """tensors: {name: (dtype, shape, flat list)}; dtype F32, F16, BOOL or I64."""
    fmt = {"F32": "f", "F16": "e", "BOOL": "?", "I64": "q"}
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, values) in tensors.items():
        blob = struct.pack(f"<{len(values)}{fmt[dtype]}", *values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_header(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


def values(n, seed):
    return [((i * 7 + seed * 13) % 11 - 5) / 10.0 for i in range(n)]


def run_errors(attn_run, workdir):
    w = Path(workdir)
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    E = 4
    weights = {f"{p}.{k}": ("F32", [E, E] if k == "weight" else [E], values(E * E if k == "weight" else E, i))
               for i, p in enumerate(("query", "key", "value")) for k in ("weight", "bias")}
    write_st(w / "weights.safetensors", weights)
    write_st(w / "missing.safetensors", {k: v for k, v in weights.items() if k != "key.bias"})
    write_st(w / "misshaped.safetensors", {**weights, "query.weight": ("F32", [E, E - 1], values(E * (E - 1), 9))})
    (w / "garbage.safetensors").write_bytes(b"\xff" * 64)
    x = ("F32", [2, 3, E], values(2 * 3 * E, 5))
    write_st(w / "inputs.safetensors", {"x": x})
    write_st(w / "narrow.safetensors", {"x": ("F32", [2, 3, E + 1], values(2 * 3 * (E + 1), 5))})
    write_st(w / "badmask.safetensors", {"x": x, "attn_mask": ("BOOL", [3, 2], [False] * 6)})
    write_st(w / "extra.safetensors", {"x": x, "query": x})
    write_st(w / "half.safetensors", {"x": ("F16", [2, 3, E], values(2 * 3 * E, 5))})
    out = w / "output.safetensors"
    base = ["--module", "self_attention", "--embed-dim", str(E), "--weights", str(w / "weights.safetensors"),
            "--inputs", str(w / "inputs.safetensors"), "--output", str(out)]

    def args(**changes):
        a = list(base)
        for k, v in changes.items():
            flag = "--" + k.replace("_", "-")
            a[a.index(flag) + 1] = str(v)
        return a

    failures = []

    def check(name, argv, status, stderr_has=None):
        for f in w.glob("output.safetensors*"):
            f.unlink()
        r = subprocess.run([attn_run, *argv], capture_output=True, text=True)
        lines = r.stderr.splitlines()
        problems = []
        if r.returncode != status:
            problems.append(f"exit status {r.returncode}, expected {status}")
        if status != 0:
            if len(lines) != 1 or not lines[0].startswith("attn_run: "):
                problems.append(f"stderr is not one 'attn_run: ...' line: {r.stderr!r}")
            elif stderr_has and stderr_has not in lines[0]:
                problems.append(f"stderr does not mention {stderr_has!r}: {lines[0]!r}")
            left = sorted(f.name for f in w.glob("output.safetensors*"))
            if left:
                problems.append(f"left files behind: {left}")
        print(f"{'ok  ' if not problems else 'FAIL'} {name}: exit {r.returncode}: {(lines or [''])[0]}")
        for p in problems:
            print(f"     {p}")
        if problems:
            failures.append(name)
        return r

    # The good case first, so the failures below are failures of one thing only.
    r = check("valid run with --repeat 3 --threads 1", base + ["--repeat", "3", "--threads", "1"], 0)
    if not re.fullmatch(r"forward median: [0-9]+\.[0-9]+ ms \(3 runs\)\n", r.stdout):
        print(f"FAIL     --repeat printed {r.stdout!r}")
        failures.append("repeat line")
    if not out.exists() or read_header(out).get("output", {}).get("shape") != [2, 3, E]:
        print("FAIL     no output (2, 3, 4) written")
        failures.append("output written")

    check("missing weight", args(weights=w / "missing.safetensors"), 1, "key.bias")
    check("misshaped weight", args(weights=w / "misshaped.safetensors"), 1, "query.weight")
    check("weights not safetensors", args(weights=w / "garbage.safetensors"), 1, "garbage.safetensors")
    check("weights file missing", args(weights=w / "nonexistent.safetensors"), 1, "nonexistent.safetensors")
    check("prefix matches nothing", base + ["--prefix", "blocks.0."], 1, "blocks.0.")
    check("x does not fit embed_dim", args(inputs=w / "narrow.safetensors"), 1, "x")
    check("attn_mask shape", args(inputs=w / "badmask.safetensors"), 1, "attn_mask")
    check("unexpected input tensor", args(inputs=w / "extra.safetensors"), 1, "query")
    check("float16 input computes in float16", args(inputs=w / "half.safetensors"), 0)
    if not out.exists() or read_header(out).get("output", {}).get("dtype") != "F16":
        print("FAIL     a float16 x did not give a float16 output")
        failures.append("float16 output")
    check("unknown --dtype", base + ["--dtype", "int8"], 2, "--dtype")
    check("output directory missing", args(output=w / "no_such_dir" / "y.safetensors"), 1, "no_such_dir")
    (w / "outdir").mkdir()
    check("output is a directory (rename fails)", args(output=w / "outdir"), 1, "outdir")
    if sorted(f.name for f in w.glob("outdir*")) != ["outdir"]:
        print(f"FAIL     temporary file left: {sorted(f.name for f in w.glob('outdir*'))}")
        failures.append("temporary file removed")
    check("heads do not divide embed_dim",
          args(module="multi_head_attention") + ["--num-heads", "3"], 2, "--num-heads 3")
    check("unknown flag", base + ["--bogus"], 2, "--bogus")
    check("missing value", base + ["--repeat"], 2, "--repeat")
    check("non-numeric number", args(embed_dim="4x"), 2, "--embed-dim")
    check("flag the module does not take", base + ["--need-weights"], 2, "--need-weights")
    check("--return-lse is sdpa's", base + ["--return-lse"], 2, "--return-lse")
    check("--sinks is gqa_attention's", base + ["--sinks"], 2, "--sinks")
    check("missing --weights", base[:4] + base[6:], 2, "--weights")
    check("unknown module", args(module="lstm"), 2, "lstm")

    # --help describes each flag under the module that takes it: --causal and --incremental
    # under multi_head_attention (before the next module's line), not under attention_block.
    r = subprocess.run([attn_run, "--help"], capture_output=True, text=True)
    modules = re.split(r"\n  (?=[a-z_]+ {2,})", r.stdout.split("Modules and the constructor flags")[-1])
    mha = next((m for m in modules if m.startswith("multi_head_attention")), "")
    block = next((m for m in modules if m.startswith("attention_block")), "")
    if r.returncode != 0 or "--causal" not in mha or "--incremental" not in mha or "--causal" in block:
        print("FAIL --help: --causal / --incremental are not listed under multi_head_attention")
        failures.append("help")
    else:
        print("ok   --help lists --causal and --incremental under multi_head_attention")

    # An existing output file is left as it was when attn_run fails.
    out.write_bytes(b"previous")
    r = subprocess.run([attn_run, *args(weights=w / "missing.safetensors")], capture_output=True)
    leftovers = [f.name for f in w.glob("output.safetensors.*")]
    if r.returncode != 1 or out.read_bytes() != b"previous" or leftovers:
        print(f"FAIL existing output: exit {r.returncode}, content {out.read_bytes()[:16]!r}, leftovers {leftovers}")
        failures.append("existing output")
    else:
        print("ok   existing output left untouched on failure")

    print(f"{len(failures)} failure(s)" + (": " + ", ".join(failures) if failures else ""))
    return 1 if failures else 0


def with_torch(workdir):
    """(numpy, torch, WORKDIR emptied) with torch.manual_seed(0), or None with the reason
    printed when this Python has no PyTorch or NumPy."""
    try:
        import numpy
        import torch
    except ImportError as e:
        print(f"SKIPPED: {sys.executable} cannot import PyTorch/NumPy ({e}); "
              "install python3-torch python3-numpy to run the end-to-end check")
        return None
    w = Path(workdir)
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    torch.manual_seed(0)
    return numpy, torch, w


def run_dtypes(attn_run, workdir):
    env = with_torch(workdir)
    if env is None:
        return SKIP
    np, torch, w = env
    K, N = 67, 40
    m, x = torch.nn.Linear(K, N), torch.randn(3, 7, K)
    f32 = lambda t: ("F32", list(t.shape), t.detach().flatten().tolist())  # noqa: E731
    write_st(w / "weights.safetensors", {k: f32(v) for k, v in m.state_dict().items()})
    write_st(w / "inputs.safetensors", {"x": f32(x)})
    with torch.no_grad():
        h = {k: v.half().double() for k, v in m.state_dict().items()}
        expected = {"float16": ("F16", x.half().double() @ h["weight"].T + h["bias"], 2.0 ** -10),
                    "bfloat16": ("BF16", m.to(torch.bfloat16)(x.to(torch.bfloat16)).float(), 2.0 ** -7)}
    # nn.MultiheadAttention (self-attention): against the float64 module on the values rounded
    # to the dtype, within four steps of the dtype (attn sums in float32, rounds each op's output).
    E, H = 32, 4
    mha, q = torch.nn.MultiheadAttention(E, H, batch_first=True), torch.randn(2, 9, E)
    write_st(w / "mha_weights.safetensors", {k: f32(v) for k, v in mha.state_dict().items()})
    write_st(w / "mha_inputs.safetensors", {"query": f32(q)})
    with torch.no_grad():
        for dtype, dt in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
            exact = copy.deepcopy(mha).to(dt).double()
            ref = exact(*(q.to(dt).double(),) * 3, need_weights=False)[0]
            st, _, one = expected[dtype]
            expected["mha_" + dtype] = (st, ref, 4 * one)
    runs = {"linear": ["--module", "linear", "--in-features", str(K), "--out-features", str(N), "--weights",
                       str(w / "weights.safetensors"), "--inputs", str(w / "inputs.safetensors")],
            "mha": ["--module", "multi_head_attention", "--embed-dim", str(E), "--num-heads", str(H), "--weights",
                    str(w / "mha_weights.safetensors"), "--inputs", str(w / "mha_inputs.safetensors")]}
    failures = []
    for name, (st_dtype, ref, tol) in expected.items():
        module, dtype = name.split("_") if "_" in name else ("linear", name)
        out = w / f"{name}.safetensors"
        r = subprocess.run([attn_run, *runs[module], "--output", str(out), "--dtype", dtype], capture_output=True,
                           text=True)
        if r.returncode != 0:
            failures.append(f"{name}: exit {r.returncode}: {r.stderr.strip()}")
            continue
        info, got = read_tensor(out, "output", np)
        err = max_error(got, ref, np)
        ok = info["dtype"] == st_dtype and info["shape"] == list(ref.shape) and err <= tol
        print(f"{'ok  ' if ok else 'FAIL'} {module} --dtype {dtype}: output {info['dtype']}{info['shape']}, max "
              f"error {err:.3g} of max |ref| (tolerance {tol:g})")
        if not ok:
            failures.append(name)
    print(f"{len(failures)} failure(s)" + (": " + ", ".join(failures) if failures else ""))
    return 1 if failures else 0


def max_error(got, ref, np):
    """max |got - ref| / max |ref| of a flat NumPy array against a torch tensor, in float64."""
    ref = ref.double().numpy().reshape(-1)
    return float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())


def read_tensor(path, name, np):
    """(header entry, values as float32) of an F32, F16 or BF16 tensor of a safetensors file."""
    info = read_header(path)[name]
    raw = Path(path).read_bytes()
    begin, end = info["data_offsets"]
    data = raw[8 + int.from_bytes(raw[:8], "little"):][begin:end]
    if info["dtype"] == "BF16":
        return info, (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    return info, np.frombuffer(data, dtype={"F16": "<f2", "F32": "<f4"}[info["dtype"]]).astype(np.float32)


def run_lse(attn_run, workdir):
    env = with_torch(workdir)
    if env is None:
        return SKIP
    np, torch, w = env
    B, H, L, S, D = 2, 3, 5, 11, 8
    q, k, v = torch.randn(B, H, L, D) * 2, torch.randn(B, H, S, D), torch.randn(B, H, S, D)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[1, 7:] = True
    f32 = lambda t: ("F32", list(t.shape), t.flatten().tolist())  # noqa: E731
    write_st(w / "inputs.safetensors", {"query": f32(q), "key": f32(k), "value": f32(v),
                                        "key_padding_mask": ("BOOL", [B, S], kpm.flatten().tolist())})
    logits = (q.double() @ k.double().transpose(-1, -2) / D ** 0.5).masked_fill(kpm[:, None, None, :], float("-inf"))
    expected = {"output": logits.softmax(-1) @ v.double(), "lse": torch.logsumexp(logits, -1)}
    failures = []
    for dtype, tol in (("float32", 1e-5), ("bfloat16", 2e-2)):
        out = w / f"{dtype}.safetensors"
        r = subprocess.run([attn_run, "--module", "sdpa", "--inputs", str(w / "inputs.safetensors"), "--output",
                            str(out), "--dtype", dtype, "--return-lse"], capture_output=True, text=True)
        if r.returncode != 0:
            failures.append(f"{dtype}: exit {r.returncode}: {r.stderr.strip()}")
            continue
        for name, ref in expected.items():
            info, got = read_tensor(out, name, np)
            want = "F32" if name == "lse" else {"float32": "F32", "bfloat16": "BF16"}[dtype]
            err = max_error(got, ref, np)
            ok = info["dtype"] == want and info["shape"] == list(ref.shape) and err <= tol
            print(f"{'ok  ' if ok else 'FAIL'} sdpa --dtype {dtype}: {name} {info['dtype']}{info['shape']}, max "
                  f"error {err:.3g} of max |ref| (tolerance {tol:g})")
            if not ok:
                failures.append(f"{dtype} {name}")
    print(f"{len(failures)} failure(s)" + (": " + ", ".join(failures) if failures else ""))
    return 1 if failures else 0


def run_packed(attn_run, workdir):
    env = with_torch(workdir)
    if env is None:
        return SKIP
    np, torch, w = env
    sys.path.insert(0, str(EXPORT.parent))
    import torch_reference as ref
    E, H, K, lengths = 32, 4, 2, [5, 1, 12, 7]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    seqs = [torch.randn(1, n, E) for n in lengths]
    f32 = lambda t: ("F32", list(t.shape), t.detach().flatten().tolist())  # noqa: E731
    packed = torch.cat(seqs, 1)[0]
    gqa = ref.LlamaAttention(E, H, K)
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True)
    runs = {}
    with torch.no_grad():
        for p in gqa.parameters():
            p.normal_(0, 0.2)
        mask = lambda n: torch.ones(n, n, dtype=torch.bool).triu(1)  # noqa: E731
        runs["gqa_attention"] = (gqa, "x", torch.cat([gqa(s) for s in seqs], 1)[0],
                                 ["--num-kv-heads", str(K)])
        runs["multi_head_attention"] = (mha, "query", torch.cat([mha(s, s, s, attn_mask=mask(s.shape[1]),
                                                                     need_weights=False)[0] for s in seqs], 1)[0],
                                        ["--causal"])
    failures = []
    for module, (m, name, expected, flags) in runs.items():
        write_st(w / f"{module}_weights.safetensors", {k: f32(v) for k, v in m.state_dict().items()})
        write_st(w / f"{module}_inputs.safetensors", {name: f32(packed), "cu_seqlens": ("I64", [len(cu)], cu)})
        out = w / f"{module}_out.safetensors"
        r = subprocess.run([attn_run, "--module", module, "--embed-dim", str(E), "--num-heads", str(H), *flags,
                            "--weights", str(w / f"{module}_weights.safetensors"), "--inputs",
                            str(w / f"{module}_inputs.safetensors"), "--output", str(out)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            failures.append(f"{module}: exit {r.returncode}: {r.stderr.strip()}")
            continue
        info, got = read_tensor(out, "output", np)
        err = max_error(got, expected, np)
        ok = info["shape"] == list(expected.shape) and err <= 1e-5
        print(f"{'ok  ' if ok else 'FAIL'} {module} packed {lengths}: output {info['dtype']}{info['shape']}, max "
              f"error {err:.3g} of max |ref| (tolerance 1e-05)")
        if not ok:
            failures.append(module)
    print(f"{len(failures)} failure(s)" + (": " + ", ".join(failures) if failures else ""))
    return 1 if failures else 0


def main(argv):
    if len(argv) < 3 or argv[0] not in ("case", "errors", "dtypes", "lse", "packed"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, attn_run, workdir = argv[:3]
    if mode == "case":
        return run_case(attn_run, workdir, argv[3:])
    if mode == "dtypes":
        return run_dtypes(attn_run, workdir)
    if mode == "lse":
        return run_lse(attn_run, workdir)
    if mode == "packed":
        return run_packed(attn_run, workdir)
    return run_errors(attn_run, workdir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
