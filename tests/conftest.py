"""Shared fixtures: tiny phi models built by transformers' reference PhiForCausalLM."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# The tests never touch the user's real cache (~/.cache/phi-edge): every process they start inherits this.
_CACHE = tempfile.mkdtemp(prefix="phi-edge-test-cache-")
os.environ["PHI_EDGE_CACHE"] = _CACHE


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)


WEB = Path(__file__).resolve().parents[1] / "runtime" / "web"


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not on PATH (apt-get install -y nodejs npm)"
    if not (WEB / "node_modules" / "onnxruntime-web").is_dir():
        return "runtime/web/node_modules lacks onnxruntime-web (bash runtime/web/setup.sh)"
    if shutil.which("chromium") is None:
        return "chromium is not installed (bash runtime/web/setup.sh, as root)"
    return None


@pytest.fixture(scope="session")
def web_ready():
    """Installs what the browser tests need (runtime/web/setup.sh: npm ci, Debian's chromium) on first use, so the
    README's test command runs them on a fresh machine; skips, with the reason, only where that cannot be done."""
    if _missing() and shutil.which("npm"):
        subprocess.run(["bash", str(WEB / "setup.sh")], capture_output=True, timeout=900)
    reason = _missing()
    if reason:
        pytest.skip(f"the web runtime cannot run here: {reason}")


torch = pytest.importorskip("torch")


def hf_reference(config, seed: int = 0):
    """transformers' PhiForCausalLM (the reference implementation) with random weights for `config`."""
    import transformers

    torch.manual_seed(seed)
    hf_config = transformers.PhiConfig(**config.to_hf_dict())
    model = transformers.PhiForCausalLM(hf_config, ).eval()
    model.config._attn_implementation = "eager"
    # Non-trivial LayerNorm and bias values, so a swapped or skipped tensor cannot go unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def ours_from_reference(reference, config):
    from train.model import PhiForCausalLM

    model = PhiForCausalLM(config).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    return model
