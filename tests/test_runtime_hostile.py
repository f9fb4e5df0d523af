"""runtime/ as a new user and an attacker meet it, second sweep (issue 21, items 5-10): manifests that do not
describe their graph, closed standard streams, the Python API's types, chat commands and ignored options, the
web server's files, an empty cache variable and a replaced tokenizer. Each is one line, exit 2, no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import runtime
from runtime.engine import EngineOptions
from runtime.loop import GenerationConfig
from runtime.manifest import MANIFEST
from runtime.pipeline import DEFAULT_PACKAGE
from runtime.sampling import SamplingConfig
from tests.test_runtime_safety import _damaged, _set, one_line_error, run

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "runtime" / "web"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


# ---------------------------------------------------------------- 5. the manifest against its graph


@pytest.mark.parametrize("edit, field", [
    (_set("max_length", 1024), "'max_length' is 1024 but the graph's rotary tables cover 512"),
    (_set("max_length", 2**30), "rotary tables cover 512"),
    (_set("max_length", 10**12), "max_length"),
    (_set("model.vocab_size", 5000), "'model.vocab_size' is 5000"),
    (_set("io.kv_cache.kv_heads", 4), "'io.kv_cache.kv_heads' is 4"),
    (_set("io.kv_cache.head_dim", 64), "'io.kv_cache.head_dim' is 64"),
    (_set("io.kv_cache.dtype", "float16"), "'io.kv_cache.dtype' says float16"),
])
@pytest.mark.parametrize("json_output", [False, True])
def test_a_manifest_that_does_not_describe_its_graph_is_refused_at_load(edit, field, json_output, tmp_path):
    package = _damaged(tmp_path, edit)
    args = ["x", "--model", str(package), "--threads", "1", "--max-new-tokens", "600", "--ignore-eos"]
    proc = run("runtime.generate", *args, *(["--json"] if json_output else []), stdin="")
    one_line_error(proc, field)
    assert proc.stdout == ""  # refused before anything was generated


def test_the_context_follows_free_memory_and_says_so_in_one_line(monkeypatch, capsys):
    """With little free memory the demo package gets the context that fits (a multiple of 64), one line on stderr
    says so and why, and the text is still generated; a context beyond max_length is one line naming it."""
    import runtime.engine
    from runtime.generate import main
    from runtime.kvcache import OVERHEAD, SHARE, plan_context
    from runtime.manifest import load_manifest

    m = load_manifest(DEFAULT_PACKAGE)
    weights = sum(e["bytes"] for n, e in m.files.items() if n.startswith("model.onnx"))
    rows = 9  # a step's logits rows: 1 + the default draft tokens
    free = int((weights + rows * m.contract.vocab_size * 4 + OVERHEAD + 200 * m.contract.kv_bytes_per_token) / SHARE)
    assert plan_context(m, None, free, rows).context == 192
    monkeypatch.setattr(runtime.engine, "available_memory", lambda: free)
    assert main(["def f(", "--max-new-tokens", "8", "--threads", "1", "--temperature", "0"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("def f(") and len(out.out) > len("def f(")
    notices = [line for line in out.err.splitlines() if line.startswith("notice: context 192 of 512 positions")]
    assert len(notices) == 1 and "limited by" in notices[0] and "--context" in notices[0], out.err
    monkeypatch.undo()
    proc = run("runtime.generate", "x", "--threads", "1", "--context", str(2**30), stdin="")
    one_line_error(proc, "context 1073741824 is outside 1..512")


# ---------------------------------------------------------------- 6. closed standard streams, the server's port


@pytest.mark.parametrize("command, expect", [
    ("python -m runtime.generate - <&-", "standard input is closed"),
    ("python -m runtime.chat <&-", "standard input is closed"),
    ("python -m runtime.generate x >&-", "standard output is closed"),
    ("python -m runtime.generate x --json >&-", "standard output is closed"),
    ("python -m runtime.web --port 99999", "--port 99999 is not a TCP port"),
    ("python -m runtime.web --port -1", "--port -1 is not a TCP port"),
])
def test_closed_streams_and_bad_ports_are_one_line(command, expect):
    proc = subprocess.run(["bash", "-c", command.replace("python", sys.executable, 1)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


# ---------------------------------------------------------------- 7. the Python API's types


def test_the_api_accepts_a_list_of_stops_and_refuses_wrong_types():
    assert GenerationConfig(stop=["x", "y"]).stop == ("x", "y")
    for bad, field in [(dict(max_new_tokens=10.5), "max_new_tokens"), (dict(max_new_tokens=True), "max_new_tokens"),
                       (dict(stop=[1]), "stop"), (dict(prefill_chunk=2.0), "prefill_chunk"),
                       (dict(sampling={"temperature": 0}), "sampling"), (dict(stop_at_eos="no"), "stop_at_eos")]:
        with pytest.raises(ValueError, match=field):
            GenerationConfig(**bad)
    with pytest.raises(ValueError, match="top-k must be an integer"):
        SamplingConfig(top_k=2.5)
    with pytest.raises(ValueError, match="context must be an integer"):
        EngineOptions(context=100.0)
    model = runtime.load(options=EngineOptions(threads=1))
    out = model.generate("def f(x):", GenerationConfig(max_new_tokens=8, stop=["\n"],
                                                        sampling=SamplingConfig(temperature=0)))
    assert "\n" not in out.text
    with pytest.raises(ValueError, match="prompt must be a string"):
        model.generate(b"bytes")


# ---------------------------------------------------------------- 8. chat commands, ignored options


def test_chat_commands_quit_help_and_unknown_ones_are_not_sent_to_the_model():
    proc = run("runtime.chat", "--max-new-tokens", "3", "--threads", "1", "--seed", "1",
               stdin="/help\n/frobnicate\n//etc is a folder\n/quit\nnever sent\n")
    assert proc.returncode == 0, proc.stderr
    assert "/reset" in proc.stderr and "/quit" in proc.stderr  # /help
    assert "unknown command /frobnicate" in proc.stderr
    assert proc.stdout.count("> ") == 4  # /help, /frobnicate, the message, /quit: "never sent" is not read
    proc = run("runtime.chat", "--max-new-tokens", "3", "--threads", "1", "--stats", stdin="hi\n/exit\nhi\n")
    assert proc.returncode == 0 and len([x for x in proc.stderr.splitlines() if x.startswith("{")]) == 1


@pytest.mark.parametrize("args, expect", [
    (["hello", "--chat"], "the prompt argument would be dropped"),
    (["--chat", "--json"], "--json prints one generation"),
    (["hello", "--drop-oldest"], "--drop-oldest applies to a chat"),
    ([], "no prompt"),
])
def test_options_the_mode_would_ignore_are_refused(args, expect):
    one_line_error(run("runtime.generate", *args, stdin="hi\n"), expect)


# ---------------------------------------------------------------- 9. the web server serves the page's files only


@pytest.fixture
def served(web_ready, tmp_path):
    from runtime.web.__main__ import make_server

    package = tmp_path / "pkg"
    shutil.copytree(DEFAULT_PACKAGE, package)
    (package / "weights").mkdir()  # a link to a file inside the folder: served, and loaded by Python
    (package / "model.onnx.data").rename(package / "weights" / "blob")
    (package / "model.onnx.data").symlink_to(Path("weights") / "blob")
    (package / "notes.txt").write_text("not part of the package")
    server = make_server(package, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", package
    server.shutdown()
    server.server_close()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_server_serves_the_page_the_vendor_files_and_the_package_only(served):
    base, package = served
    for path in ("/", "/index.html", "/js/app.js", "/style.css", "/vendor/onnxruntime-web/dist/ort.wasm.min.mjs",
                 "/vendor/@huggingface/tokenizers/dist/tokenizers.min.mjs", "/package/manifest.json",
                 "/package/tokenizer.json", "/package/model.onnx.data"):
        assert _status(base + path) == 200, path
    for path in ("/__main__.py", "/__init__.py", "/js/", "/vendor/", "/package/", "/package/notes.txt",
                 "/vendor/onnxruntime-web/package.json", "/package.json", "/test/golden.mjs", "/setup.sh",
                 "/package/%2e%2e/%2e%2e/pyproject.toml", "/vendor/../../../pyproject.toml"):
        assert _status(base + path) == 404, path
    assert _status(base + "/%00") == 400
    assert _status(base + "/js/%ff") == 400
    model = runtime.load(package, EngineOptions(threads=1))  # the same symlinked file loads in Python
    assert model.generate("def f(x):", GenerationConfig(max_new_tokens=4)).stats.new_tokens == 4


def test_the_server_checks_the_package_with_the_runtimes_manifest_rules(web_ready, tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"hello": "world"}))
    one_line_error(run("runtime.web", "--package", str(tmp_path), "--port", "0"), "not a phi-edge-package manifest")
    outside = tmp_path / "outside"  # a link out of the folder: refused by both (ONNX Runtime refuses it too)
    shutil.copytree(DEFAULT_PACKAGE, outside)
    (outside / "model.onnx.data").unlink()
    (outside / "model.onnx.data").symlink_to(DEFAULT_PACKAGE / "model.onnx.data")
    one_line_error(run("runtime.web", "--package", str(outside), "--port", "0"), "outside the package folder")
    one_line_error(run("runtime.generate", "x", "--model", str(outside), stdin=""), "outside the package folder")
    proc = subprocess.Popen([sys.executable, "-m", "runtime.web", "--port", "0"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = proc.stdout.readline().split()[1].rstrip("/")
        assert _status(base + "/%00") == 400
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "Traceback" not in err, err


# ---------------------------------------------------------------- 10. the cache variable, a replaced tokenizer


def test_an_empty_cache_variable_is_unset(tmp_path):
    env = {**ENV, "PHI_EDGE_CACHE": "", "HOME": str(tmp_path / "home")}
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-m", "runtime.generate", "x", "--max-new-tokens", "2"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (work / "threads").exists()
    assert list((tmp_path / "home" / ".cache" / "phi-edge" / "threads").glob("*.json"))


def test_a_replaced_tokenizer_is_refused_at_every_load(tmp_path):
    package = tmp_path / "pkg"
    shutil.copytree(DEFAULT_PACKAGE, package)
    from tests.test_runtime import make_tokenizer

    make_tokenizer(package / "tokenizer.json")  # another real tokenizer of fewer tokens
    one_line_error(run("runtime.generate", "x", "--model", str(package), "--threads", "1", stdin=""),
                   "tokenizer.json does not match its sha256")
