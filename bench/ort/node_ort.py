"""ONNX Runtime through Node for compare.py: installs onnxruntime-node and runs ort_run.js.

onnxruntime-node (the version pinned in package.json beside this file) is installed with npm into
a folder outside the source tree (compare.py's --ort-dir), with ONNXRUNTIME_NODE_INSTALL=skip: its
install step would download optional GPU files, and the CPU library is in the npm package itself.
ort_run.js finds it through NODE_PATH.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_JSON = HERE / "package.json"
RUNNER = HERE / "ort_run.js"
PACKAGE = "onnxruntime-node"


class OrtUnavailable(RuntimeError):
    """ORT cannot be installed or started (no node / npm, npm failed)."""


class OrtFailed(RuntimeError):
    """ort_run.js failed on a model."""


def pinned_version():
    return json.loads(PACKAGE_JSON.read_text())["dependencies"][PACKAGE]


def installed_version(ort_dir):
    meta = Path(ort_dir) / "node_modules" / PACKAGE / "package.json"
    return json.loads(meta.read_text())["version"] if meta.is_file() else None


def _require_tools():
    missing = [tool for tool in ("node", "npm") if not shutil.which(tool)]
    if missing:
        raise OrtUnavailable(f"{' and '.join(missing)} not found: ONNX Runtime runs through Node.js "
                             "(apt-get install nodejs npm), or pass --no-ort")


def ensure_installed(ort_dir):
    """Installs the pinned onnxruntime-node into ort_dir unless it is there; returns its version."""
    ort_dir, want = Path(ort_dir), pinned_version()
    _require_tools()
    if installed_version(ort_dir) == want:
        return want
    ort_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PACKAGE_JSON, ort_dir / "package.json")
    print(f"installing {PACKAGE}@{want} into {ort_dir} (npm, ONNXRUNTIME_NODE_INSTALL=skip) ...", flush=True)
    p = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=ort_dir, capture_output=True, text=True,
                       env={**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"})
    if p.returncode != 0 or installed_version(ort_dir) != want:
        raise OrtUnavailable(f"npm install of {PACKAGE}@{want} in {ort_dir} failed ({p.returncode}):\n"
                             f"{p.stdout}{p.stderr}(or pass --no-ort)")
    return want


class NodeOrt:
    """Runs ort_run.js with the onnxruntime-node of ort_dir."""

    def __init__(self, ort_dir):
        self.env = {**os.environ, "NODE_PATH": str(Path(ort_dir).resolve() / "node_modules")}

    def run(self, model, inputs, threads, output=None, repeat=0, warmup=0):
        """One ort_run.js call; returns its JSON line (first_ms, median_ms, min_ms, ort, ...)."""
        cmd = ["node", str(RUNNER), "--model", str(model), "--inputs", str(inputs), "--threads", str(threads),
               "--repeat", str(repeat), "--warmup", str(warmup)] + (["--output", str(output)] if output else [])
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if p.returncode != 0:
            raise OrtFailed(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
        return json.loads(p.stdout.strip().splitlines()[-1])
