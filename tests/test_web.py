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


def browser(link: str, png: Path | str = "", *args: str) -> dict:
    """test/browser.mjs on `link`: the page's output, stats, backend, error and Chromium's peak memory."""
    out = subprocess.run(["node", "test/browser.mjs", link, str(png), *args], cwd=WEB, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def serve(package: Path | None = None) -> tuple[subprocess.Popen, str]:
    extra = [] if package is None else ["--package", str(package)]
    server = subprocess.Popen([sys.executable, "-m", "runtime.web", "--port", "0", *extra], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return server, server.stdout.readline().split()[1]


def _page_greedy_equals_python(package: Path, prompt: str, new: int, png: Path, backend: str = "wasm"):
    """The page's greedy text for `prompt` (headless Chromium, runtime.web serving `package`, on `backend`: webgpu
    is SwiftShader's adapter, chosen by the page itself) is the Python runtime's, token for token."""
    from runtime.engine import EngineOptions
    from runtime.loop import GenerationConfig
    from runtime.sampling import SamplingConfig

    import runtime

    model = runtime.load(package, EngineOptions(threads=1))
    want = model.generate(prompt, GenerationConfig(max_new_tokens=new, stop_at_eos=False,
                                                   sampling=SamplingConfig(temperature=0, top_p=1)))
    server, url = serve(package)
    try:
        link = (f"{url}?prompt={quote(prompt)}&max_new_tokens={new}&temperature=0&template=completion&stop_at_eos=0"
                f"&autorun=1")
        page = browser(link, png, "--desktop", *(["--webgpu"] if backend == "webgpu" else []))
        assert page["error"] == "", page
        assert page["statsJson"]["backend"] == backend, page
        assert page["statsJson"]["new_tokens"] == new, page
        assert page["output"] == want.text, (page["output"], want.text)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return model, want


@pytest.mark.parametrize("backend", ["wasm", "webgpu"])
def test_longrope_package_in_the_browser_equals_python(web_ready, tmp_path, backend):
    """A LongRoPE package (tiny Phi-4-mini, switch at 32) in headless Chromium, on wasm and on WebGPU (SwiftShader):
    the reply crosses the switch and the page shows the Python runtime's greedy text, token for token (issue 21.2;
    on WebGPU the cache is fed again at the switch into the GPU buffers, as on wasm)."""
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
    model, _ = _page_greedy_equals_python(package, prompt, new, tmp_path / "longrope.png", backend)
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


def _phone_page(url: str, prompt: str, new: int, shot: Path, *args: str) -> dict:
    link = f"{url}?prompt={quote(prompt)}&max_new_tokens={new}&temperature=0&autorun=1"
    page = browser(link, shot, "--cpu-slowdown", "4", *args)
    assert page["error"] == "", page
    assert page["isolated"] is True  # the server's headers give the page SharedArrayBuffer (wasm threads)
    assert page["statsJson"]["new_tokens"] == new and page["statsJson"]["finish_reason"] == "length"
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (780, 1688)  # 390x844 at device scale 2: the phone viewport
    return page


def decode_copy_bytes(prompt_tokens: int, steps: int, vocab: int, cache_per_token: int = 0) -> int:
    """Bytes a decode step moves between the page and the session, averaged as the page does: the id, the mask
    (P + 1 ones), logits_to_keep and the logits, and on wasm the cache in (P positions) and out (P + 1)."""
    total = 0
    for k in range(steps):
        p = prompt_tokens + k  # positions held before the step
        total += 8 * (1 + p + 1 + 1) + 4 * vocab + cache_per_token * (2 * p + 1)
    return round(total / steps)


def test_phone_page_greedy_equals_python(web_ready, tmp_path):
    """Chromium without a GPU: the page falls back to wasm, says so, and shows the Python runtime's greedy text;
    every decode step copies the whole cache into the wasm heap and out again."""
    server, url = serve()
    try:
        prompt = "def fibonacci(n):"
        page = _phone_page(url, prompt, 32, tmp_path / "phone.png")
        assert page["output"] == python_greedy(prompt, 32), page
        stats, manifest = page["statsJson"], load_manifest(runtime_demo())
        assert stats["backend"] == "wasm" and "no WebGPU" in page["backend"], page
        assert stats["copied_bytes_per_step"] == decode_copy_bytes(
            stats["prompt_tokens"], stats["decode_steps"], manifest.contract.vocab_size,
            manifest.contract.kv_bytes_per_token), stats
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_phone_page_on_webgpu_equals_python(web_ready, tmp_path):
    """Chromium with SwiftShader's WebGPU adapter, as a phone: the page picks WebGPU by itself for the demo package,
    shows the Python runtime's greedy text, and a decode step moves only the id, the mask and the logits (the KV
    cache stays in GPU buffers, bound as past and present)."""
    server, url = serve()
    try:
        prompt = "def fibonacci(n):"
        page = _phone_page(url, prompt, 24, tmp_path / "phone-webgpu.png", "--webgpu")
        assert page["output"] == python_greedy(prompt, 24), page
        stats, manifest = page["statsJson"], load_manifest(runtime_demo())
        assert stats["backend"] == "webgpu" and page["backend"].startswith("webgpu ("), page
        assert stats["copied_bytes_per_step"] == decode_copy_bytes(stats["prompt_tokens"], stats["decode_steps"],
                                                                   manifest.contract.vocab_size), stats
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_int8_cache_package_falls_back_to_wasm_and_refuses_forced_webgpu(web_ready, tmp_path):
    """WebGPU's attention takes no int8 cache: with an adapter, the page runs such a package on wasm and says why;
    ?backend=webgpu gets one line naming the problem and the fix, and nothing runs."""
    from export.options import ExportOptions
    from export.package import export_package

    package = export_package(ROOT / "train" / "demo", tmp_path / "kv8", ExportOptions(block_size=32, kv_dtype="int8"),
                             show_progress=False)
    server, url = serve(package)
    try:
        prompt = "import os"
        link = f"{url}?prompt={quote(prompt)}&max_new_tokens=4&temperature=0&autorun=1"
        page = browser(link, "", "--desktop", "--webgpu")
        assert page["error"] == "" and page["statsJson"]["backend"] == "wasm", page
        assert "no WebGPU: the package's KV cache is int8" in page["backend"], page
        forced = browser(link + "&backend=webgpu", "", "--desktop", "--webgpu")
        assert forced["error"].startswith("Error: ?backend=webgpu: the package's KV cache is int8"), forced
        assert "--target web" in forced["error"] and "\n" not in forced["error"] and forced["output"] == "", forced
        other = browser(link + "&backend=cuda", "", "--desktop")
        assert "?backend=cuda is not one of webgpu, wasm" in other["error"], other
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_bench_link_reports_its_figures_on_the_page(web_ready):
    """?bench=1 (what a person opens on their own phone): a warm-up, then 128 prompt tokens and greedy new ones; the
    figures on the page and as JSON in document.body.dataset.bench."""
    server, url = serve()
    try:
        page = browser(f"{url}?bench=1&max_new_tokens=8&backend=wasm", "", "--desktop")
        assert page["error"] == "", page
        bench, per_token = page["bench"], load_manifest(runtime_demo()).contract.kv_bytes_per_token
        assert bench["backend"] == "wasm" and bench["prompt_tokens"] == 128 and bench["new_tokens"] == 8, bench
        assert bench["finish_reason"] == "length" and bench["decode_tokens_per_s"] > 0 and bench["context"] == 512
        assert bench["kv_cache_bytes"] == (128 + 7) * per_token  # the prompt and every new token but the last
        assert bench["page_memory_bytes"] > 0 and bench["warm_up_s"] > 0, bench
        assert page["statsJson"] == {k: bench[k] for k in page["statsJson"]}
    finally:
        server.terminate()
        server.wait(timeout=10)


def runtime_demo() -> Path:
    return ROOT / "runtime" / "demo"


def test_export_target_web_keeps_what_webgpu_takes(tmp_path, monkeypatch):
    """--target web: a float cache and every weight within WebGPU's guaranteed buffer, refused in one line otherwise
    (nothing written); the manifest records the target and the largest weight, which the page checks."""
    import export.package
    from export.__main__ import main
    from export.options import ExportOptions

    out = tmp_path / "web"
    assert main([str(ROOT / "train" / "demo"), str(out), "--target", "web", "--block-size", "32", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export"]["options"]["target"] == "web" and manifest["io"]["kv_cache"]["dtype"] == "float32"
    assert manifest["export"]["largest_tensor_bytes"] == 4096 * 256  # the int8 embedding and lm_head: 1 MiB each
    refused = subprocess.run([sys.executable, "-m", "export", str(ROOT / "train" / "demo"), str(tmp_path / "kv8"),
                              "--target", "web", "--kv-dtype", "int8"], capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "error: --target web keeps a float KV cache (onnxruntime-web's WebGPU attention takes no int8 cache); drop "
        "--kv-dtype int8"]
    assert not (tmp_path / "kv8").exists()
    monkeypatch.setattr(export.package, "WEB_BUFFER", 512 << 10)
    with pytest.raises(ValueError, match=r"--target web: weight \S+ takes 1 MiB, over the 0.5 MiB that WebGPU"):
        export.package.export_package(ROOT / "train" / "demo", tmp_path / "big", ExportOptions(target="web"),
                                      show_progress=False)
    assert not (tmp_path / "big").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".big")]
