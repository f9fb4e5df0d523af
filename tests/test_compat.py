"""Packages run on the oldest onnxruntime they claim (export/compat.py), in a second venv with that release.

Slow (five venvs from PyPI, about a minute and a half): run once per suite. Each release must compute the installed
onnxruntime's logits (within LOGITS_TOLERANCE, along the installed one's greedy tokens) on the packages it is
claimed for: 1.20.0 a float package and an int4 one with a
float embedding and an int4 lm_head; 1.22.0 an int8 package (8-bit MatMulNBits); 1.23.0 an int4 package
with a float cache (int8 GatherBlockQuantized embedding), which 1.20.0 must refuse in one line naming 1.23.0;
1.27.0 packages with an int8 and an int4 KV cache, and tied phi-3 ones whose int8 (the
default) or int4 embedding gathers from the lm_head's MatMulNBits weight (1.23-1.26 compute it wrong); 1.23.0 must refuse that one; 1.29.0 a
sliding-window package (GroupQueryAttention's sliding_window_cache), which 1.27.0 must refuse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.compat import BASE_ONNXRUNTIME, OP_MIN_ONNXRUNTIME
from export.options import ExportOptions
from export.package import export_package
from tests.phi3_fixtures import make_checkpoint as phi3_checkpoint
from tests.test_export import make_checkpoint
from tests.test_runtime import make_tokenizer

ROOT = Path(__file__).resolve().parents[1]
INT8_MATMUL = OP_MIN_ONNXRUNTIME[("com.microsoft", "MatMulNBits", 8)]
GBQ = OP_MIN_ONNXRUNTIME[("com.microsoft", "GatherBlockQuantized", 8)]
KV8 = OP_MIN_ONNXRUNTIME[("com.microsoft", "GroupQueryAttention", 8)]
WINDOW = OP_MIN_ONNXRUNTIME[("com.microsoft", "GroupQueryAttention", "window")]


def _venv(folder: Path, onnxruntime: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          f"onnxruntime=={onnxruntime}", "numpy", "tokenizers"], capture_output=True, text=True,
                         timeout=600)
    if pip.returncode != 0 and _unreachable(pip.stderr):
        pytest.skip(f"PyPI cannot be reached from this machine, and this check installs onnxruntime=={onnxruntime} "
                    f"from it into a second venv (pip: {' '.join(pip.stderr.split())[-200:]})")
    if pip.returncode != 0:
        pytest.fail(f"pip could not install onnxruntime=={onnxruntime}: {pip.stderr[-500:]}")
    return python


def _unreachable(pip_stderr: str) -> bool:
    """pip found no index at all (offline, or a proxy that refuses), not a missing release."""
    return "(from versions: none)" in pip_stderr or any(
        sign in pip_stderr for sign in ("Failed to establish a new connection", "Network is unreachable",
                                        "Temporary failure in name resolution", "Name or service not known",
                                        "ProxyError", "Connection refused"))


def _generate(python: Path, package: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([str(python), "-m", "runtime.generate", "def f(x):", "--model", str(package),
                           "--temperature", "0", "--max-new-tokens", "12", "--ignore-eos", "--threads", "1",
                           "--json"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


# The logits of a prompt step and of one decode step per token of `follow` (json), saved to a .npy file.
_LOGITS = """
import json, sys
import numpy as np
import runtime
from runtime.engine import EngineOptions
model = runtime.load(sys.argv[1], EngineOptions(threads=1, context=64))
rows = [model.backend.step(model.encode("def f(x):"))]
rows += [model.backend.step([t]) for t in json.loads(sys.argv[3])]
np.save(sys.argv[2], np.stack(rows))
"""
LOGITS_TOLERANCE = 0.05  # releases round int8 activations differently (up to 0.009 seen); wrong rows were off by 0.9


def _same_logits(python: Path, package: Path) -> None:
    """The release in `python` computes the installed one's logits along the installed one's greedy tokens
    (teacher-forced, so a near-tie that rounds the other way cannot send the two down different texts)."""
    here = _generate(Path(sys.executable), package)
    assert here.returncode == 0, (package.name, here.stderr[-2000:])
    follow = json.dumps(json.loads(here.stdout)["tokens"][:-1])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows = []
    for i, py in enumerate((Path(sys.executable), python)):
        out = package.parent / f"{package.name}-logits-{i}.npy"
        proc = subprocess.run([str(py), "-c", _LOGITS, str(package), str(out), follow], capture_output=True,
                              text=True, cwd=ROOT, env=env, timeout=120)
        assert proc.returncode == 0, (package.name, proc.stderr[-2000:])
        rows.append(np.load(out))
    assert rows[0].shape == rows[1].shape and np.abs(rows[0] - rows[1]).max() <= LOGITS_TOLERANCE, \
        (package.name, float(np.abs(rows[0] - rows[1]).max()))


def test_packages_run_on_the_oldest_onnxruntime_they_claim(tmp_path):
    tok = make_tokenizer(tmp_path / "tokenizer.json")
    make_checkpoint("tiny-phi-1_5", tmp_path / "ckpt", tok)
    export = lambda name, **kw: export_package(tmp_path / "ckpt", tmp_path / name, ExportOptions(**kw),  # noqa
                                               show_progress=False)
    phi3_checkpoint("tiny-phi-4-mini", tmp_path / "tied", "gpt4o")
    phi3_checkpoint("tiny-phi-3", tmp_path / "window", "llama", longrope=None)  # a 48-position window
    f32 = {"kv_dtype": "float32"}  # a quantized cache needs KV8
    claims = {BASE_ONNXRUNTIME: [export("fp32", precision="fp32", **f32),
                                 export("int4", precision="int4", embedding="fp32", lm_head="int4", **f32)],
              INT8_MATMUL: [export("int8", precision="int8", embedding="fp32", **f32)],
              GBQ: [export("int4-emb8", precision="int4", **f32)],
              KV8: [export("kv8", precision="int4", kv_dtype="int8"), export("kv4", precision="int4", kv_dtype="int4"),
                    export_package(tmp_path / "tied", tmp_path / "tied-int8", ExportOptions(precision="int4", **f32),
                                   show_progress=False),  # the default: int8 lm_head and embedding, stored once
                    export_package(tmp_path / "tied", tmp_path / "tied-int4", ExportOptions(
                        precision="int4", lm_head="int4", embedding="int4", **f32), show_progress=False)],
              WINDOW: [export_package(tmp_path / "window", tmp_path / "window-fp32",
                                      ExportOptions(precision="fp32", **f32), show_progress=False)]}
    for version, packages in claims.items():
        python = _venv(tmp_path / f"venv-{version}", version)
        for package in packages:
            assert json.loads((package / "manifest.json").read_text())["min_onnxruntime"] == version
            _same_logits(python, package)
        if version == KV8:
            refused = _generate(python, claims[WINDOW][0])
            assert refused.returncode == 2 and f"needs onnxruntime >= {WINDOW} but {KV8} is installed" in refused.stderr
        if version == GBQ:
            refused = _generate(python, claims[KV8][-1])
            assert refused.returncode == 2 and f"needs onnxruntime >= {KV8} but {GBQ} is installed" in refused.stderr
        if version == BASE_ONNXRUNTIME:
            refused = _generate(python, claims[GBQ][0])
            assert refused.returncode == 2 and "Traceback" not in refused.stderr
            assert refused.stderr.count("\n") == 1, refused.stderr
            assert f"needs onnxruntime >= {GBQ} but {BASE_ONNXRUNTIME} is installed" in refused.stderr
