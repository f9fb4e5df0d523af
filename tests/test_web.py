"""runtime/web: the runtime in the browser on onnxruntime-web.

test_web_engine_against_goldens: the web engine on Node reproduces the Python runtime's golden vectors
(tokenizers of 4 kinds, greedy / top-k 1 / repetition penalty / stop string / chat generations on the demo
package through onnxruntime-web). test_phone_page_greedy_equals_python: headless Chromium as a phone (390x844,
touch, 4x slower CPU) loads the page from `python -m runtime.web`, runs the link's prompt and shows the Python
runtime's greedy text, token for token. Both skip, with the reason, only where node, the npm packages or
chromium cannot be installed (runtime/web/setup.sh, which .ci/run runs first).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from runtime.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "runtime" / "web"


def test_server_headers_and_refusals(web_ready, tmp_path):
    from runtime.web.__main__ import make_server

    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        make_server(tmp_path, 0)
    server = make_server(port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/") as r:
            assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
            assert b'id="output"' in r.read()
        with urllib.request.urlopen(f"{base}/package/manifest.json") as r:
            assert json.loads(r.read())["format"] == "phi-edge-package"
        with urllib.request.urlopen(f"{base}/vendor/onnxruntime-web/dist/ort.wasm.min.mjs") as r:
            assert r.headers["Content-Type"] == "text/javascript"
        for escape in ("/package/%2e%2e/%2e%2e/pyproject.toml", "/vendor/../../../pyproject.toml"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(base + escape)
            assert e.value.code == 404
    finally:
        server.shutdown()


def test_web_engine_against_goldens(web_ready):
    out = subprocess.run(["node", "test/golden.mjs", str(ROOT)], cwd=WEB, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert summary.endswith(" 0 failed") and int(summary.split()[0]) >= 24, out.stdout
    for case in ("longrope_cross", "longrope_chat_cancel", "window_chat_cancel", "padded_vocab", "drop_oldest",
                 "exact_fill"):
        assert f"ok replay {case}:" in out.stdout, out.stdout  # the Python runtime's steps, replayed
    for check in ("ok sampling limits", "ok extreme sampling settings", "ok two callers on one model"):
        assert check in out.stdout, out.stdout


def python_greedy(prompt: str, n: int) -> str:
    import runtime
    from runtime.loop import GenerationConfig
    from runtime.sampling import SamplingConfig

    model = runtime.load()
    return model.generate(prompt, GenerationConfig(max_new_tokens=n, sampling=SamplingConfig(temperature=0, top_p=1))).text


def _page_greedy_equals_python(package: Path, prompt: str, new: int, png: Path):
    """The page's greedy text for `prompt` (headless Chromium, runtime.web serving `package`) is the Python
    runtime's, token for token."""
    from runtime.engine import EngineOptions
    from runtime.loop import GenerationConfig
    from runtime.sampling import SamplingConfig

    import runtime

    model = runtime.load(package, EngineOptions(threads=1))
    want = model.generate(prompt, GenerationConfig(max_new_tokens=new, stop_at_eos=False,
                                                   sampling=SamplingConfig(temperature=0, top_p=1)))
    server = subprocess.Popen([sys.executable, "-m", "runtime.web", "--port", "0", "--package", str(package)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split()[1]
        link = (f"{url}?prompt={quote(prompt)}&max_new_tokens={new}&temperature=0&template=completion&stop_at_eos=0"
                f"&autorun=1")
        out = subprocess.run(["node", "test/browser.mjs", link, str(png), "--desktop"], cwd=WEB,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        page = json.loads(out.stdout.strip().splitlines()[-1])
        assert page["error"] == "", page
        assert page["statsJson"]["new_tokens"] == new, page
        assert page["output"] == want.text, (page["output"], want.text)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return model, want


def test_longrope_package_in_the_browser_equals_python(web_ready, tmp_path):
    """A LongRoPE package (tiny Phi-4-mini, switch at 32) in headless Chromium: the reply crosses the switch and
    the page shows the Python runtime's greedy text, token for token (issue 21.2)."""
    from export.options import ExportOptions
    from export.package import export_package
    from tests.phi3_fixtures import make_checkpoint

    def sharpen(model):  # peaked attention: keys rotated with the wrong tables change the greedy tokens
        for layer in model.model.layers:
            layer.self_attn.qkv_proj.weight.mul_(6.0)

    make_checkpoint("tiny-phi-4-mini", tmp_path / "ckpt", "gpt4o", seed=4, edit=sharpen)
    package = export_package(tmp_path / "ckpt", tmp_path / "pkg", ExportOptions(precision="fp32"), show_progress=False)
    prompt, new = "def add(a, b):", 40
    assert load_manifest(package).rope_switch == 32
    model, _ = _page_greedy_equals_python(package, prompt, new, tmp_path / "longrope.png")
    assert len(model.encode(prompt)) + new > 32 + 4


def test_sliding_window_package_in_the_browser_equals_python_and_transformers(web_ready, tmp_path):
    """A sliding-window package (tiny Phi-3-mini-4k: window 48, context 512, so a buffer of 48 + 256 positions) in
    headless Chromium: the reply passes the first eviction at 305 tokens, and the page, the Python runtime and
    transformers' generate give the same greedy tokens."""
    import argparse

    import numpy as np
    import torch

    from export.options import ExportOptions
    from export.package import export_package
    from tests.phi3_fixtures import make_checkpoint

    reference, _ = make_checkpoint("tiny-phi-3", tmp_path / "ckpt", "llama", seed=6, longrope=None,
                                   max_position_embeddings=512)
    package = export_package(tmp_path / "ckpt", tmp_path / "pkg", ExportOptions(precision="fp32"), show_progress=False)
    assert load_manifest(package).contract.window == 48
    source = Path(argparse.__file__).read_text()
    prompt, new = source[source.index("class ArgumentParser"):][:360], 40  # about 275 tokens
    model, got = _page_greedy_equals_python(package, prompt, new, tmp_path / "window.png")
    ids = model.encode(prompt)
    assert len(ids) < 48 + 256 < len(ids) + new, len(ids)  # the reply crosses the eviction
    never = [int(i) for i in np.flatnonzero(model.suppress)]  # embedding rows the tokenizer has no token for
    with torch.no_grad():
        want = reference.generate(torch.tensor([ids]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                  eos_token_id=None, pad_token_id=0, suppress_tokens=never)[0, len(ids):].tolist()
    assert got.tokens == want


def test_phone_page_greedy_equals_python(web_ready, tmp_path):
    server = subprocess.Popen([sys.executable, "-m", "runtime.web", "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split()[1]
        prompt = "def fibonacci(n):"
        link = f"{url}?prompt={quote(prompt)}&max_new_tokens=32&temperature=0&autorun=1"
        shot = tmp_path / "phone.png"
        out = subprocess.run(["node", "test/browser.mjs", link, str(shot), "--cpu-slowdown", "4"], cwd=WEB,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        page = json.loads(out.stdout.strip().splitlines()[-1])
        assert page["error"] == "", page
        assert page["isolated"] is True  # the server's headers give the page SharedArrayBuffer (wasm threads)
        assert page["output"] == python_greedy(prompt, 32), page
        assert page["statsJson"]["new_tokens"] == 32 and page["statsJson"]["finish_reason"] == "length"
        png = shot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert (width, height) == (780, 1688)  # 390x844 at device scale 2: the phone viewport
    finally:
        server.terminate()
        server.wait(timeout=10)
