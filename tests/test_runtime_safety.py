"""runtime/ on hostile and unlucky input: chat penalties over the whole conversation, token ids outside the
vocabulary, damaged manifests, bytes that are not UTF-8, closed pipes, Ctrl-C in a chat, full contexts, the
thread-count cache under concurrency and odd CPUs, and bounded logits buffers (issue 10)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime import chat as chat_cli
from runtime import threads
from runtime.chat import ContextFullError
from runtime.engine import EngineOptions, OrtBackend
from runtime.loop import GenerationConfig
from runtime.manifest import MANIFEST, load_manifest
from runtime.pipeline import DEFAULT_PACKAGE, apply_template
from runtime.sampling import SamplingConfig
from tests.test_runtime import make_package

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"}
GREEDY = SamplingConfig(temperature=0)
ONE = EngineOptions(threads=1)


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    from tests.test_runtime import make_tokenizer

    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tok) -> Path:
    return make_package(tmp_path_factory.mktemp("tiny"), tok)[1]


def run(module: str, *args, stdin: bytes | str = b"", timeout: int = 120) -> subprocess.CompletedProcess:
    text = isinstance(stdin, str)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=ENV, input=stdin,
                          capture_output=True, text=text, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, expect: str) -> None:
    err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode()
    assert proc.returncode == 2, err
    assert expect in err and "Traceback" not in err, err
    assert err.strip().count("\n") == 0, err


# ---------------------------------------------------------------- 2. chat repetition penalty


def test_chat_penalty_sees_the_whole_conversation(tiny):
    model = runtime.load(tiny, ONE)
    config = GenerationConfig(24, SamplingConfig(temperature=0, repetition_penalty=1.8), stop_at_eos=False)
    chat = model.chat()
    chat.send("def add(a, b):", config)
    history, pending = list(chat.tokens), chat.pending
    turn = model.encode(pending + apply_template(model.manifest, "chat", "return a + b", "turn"))
    second = chat.send("return a + b", config)
    model.backend.truncate(0)  # the whole conversation fed fresh, as transformers would see it
    fresh = model.generate_ids(history + turn, GenerationConfig(
        24, config.sampling, stop=("\nAlice:", "\nBob:"), stop_at_eos=False))
    assert second.tokens == fresh.tokens and second.text == fresh.text


# ---------------------------------------------------------------- 3. ids outside the vocabulary


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_out_of_range_ids_are_one_clear_error(precision, tmp_path, tok):
    package = make_package(tmp_path, tok, precision=precision)[1]
    backend = OrtBackend(load_manifest(package), ONE)
    for bad in ([5, 512], [-1], [10**6]):
        with pytest.raises(ValueError, match="outside the model's vocabulary \\(0..511\\)"):
            backend.step(bad)
        assert backend.length == 0
    assert np.isfinite(backend.step([5, 511])).all()


def test_rows_the_tokenizer_cannot_decode_are_never_sampled(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from export.options import ExportOptions
    from export.package import export_package
    from tests.test_export import make_checkpoint
    from train.data import train_tokenizer

    small = train_tokenizer([Path(argparse.__file__)], 300, tmp_path / "small.json")  # 300 tokens, 512 rows
    ckpt = tmp_path / "ckpt"
    make_checkpoint("tiny-phi-1_5", ckpt, small)
    tensors = load_file(ckpt / "model.safetensors")
    tensors["lm_head.bias"] = torch.zeros(512)
    tensors["lm_head.bias"][400] = 1e3  # a padded row the model likes best: invisible if sampled
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    package = export_package(ckpt, tmp_path / "pkg", ExportOptions(precision="fp32"), show_progress=False)
    model = runtime.load(package, ONE)
    assert model.suppress.sum() == 512 - 300 and model.suppress[400]
    greedy = model.generate("def f(x):", GenerationConfig(16, GREEDY, stop_at_eos=False))
    sampled = model.generate("def f(x):", GenerationConfig(16, SamplingConfig(temperature=5.0, top_p=1.0, seed=1),
                                                           stop_at_eos=False))
    for out in (greedy, sampled):
        assert len(out.tokens) == 16 and max(out.tokens) < 300 and out.text


# ---------------------------------------------------------------- 9. bad input to the runtime CLI


def test_prompts_that_are_not_utf8_are_read_leniently():
    argv = run("runtime.generate", b"def f(\xff\xfe):", "--max-new-tokens", "4", "--threads", "1")
    assert argv.returncode == 0 and b"Traceback" not in argv.stderr, argv.stderr
    assert argv.stdout.startswith("def f(\ufffd\ufffd):".encode())
    stdin = run("runtime.generate", "-", "--max-new-tokens", "4", "--threads", "1", stdin=b"x = '\xe9'\n")
    assert stdin.returncode == 0 and stdin.stdout.startswith("x = '\ufffd'".encode()), stdin.stderr
    chat = run("runtime.chat", "--max-new-tokens", "4", "--threads", "1", stdin=b"caf\xe9\n")
    assert chat.returncode == 0 and b"Traceback" not in chat.stderr, chat.stderr


def _damaged(tmp_path: Path, edit) -> Path:
    folder = tmp_path / f"pkg{len(list(tmp_path.iterdir()))}"
    shutil.copytree(DEFAULT_PACKAGE, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest = edit(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def _set(key, value):
    def edit(d):
        target = d
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
        return d
    return edit


@pytest.mark.parametrize("edit, expect", [
    (lambda d: [d], "JSON list"),
    (_set("tokenizer.file", KeyError), "tokenizer.file"),
    (_set("files", ["model.onnx"]), "'files'"),
    (_set("max_length", -5), "max_length"),
    (_set("max_length", "12"), "max_length"),
    (_set("max_length", 12.5), "max_length"),
    (_set("files", {"../../../etc/passwd": {"sha256": "0"}}), "files.../../../etc/passwd"),
    (_set("tokenizer.eos_token_id", 10**9), "tokenizer.eos_token_id"),
    (_set("templates", {"completion": {"prompt": 5}}), "templates.completion"),
    (_set("io", {"kv_cache": {}}), "lacks or mangles field"),
    (_set("model.vocab_size", "many"), "model.vocab_size"),
])
def test_damaged_manifests_are_one_line(edit, expect, tmp_path):
    one_line_error(run("runtime.generate", "x", "--model", str(_damaged(tmp_path, edit)), "--threads", "1",
                       stdin=""), expect)


def test_cli_option_errors_name_the_option(tmp_path):
    one_line_error(run("runtime.generate", "x", "--seed", "-1", stdin=""), "--seed")
    one_line_error(run("runtime.generate", "x", "--threads", "100000", stdin=""), "--threads 100000")
    one_line_error(run("runtime.generate", "x", "--model", "README.md", stdin=""), "is a file")


def test_closed_pipe_ends_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "runtime.generate", "def f(x):", "--max-new-tokens", "400",
                             "--ignore-eos", "--threads", "1"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.read(8)  # like `| head -c 8`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
    assert err == "", err


# ---------------------------------------------------------------- 11. chat REPL and full contexts


def test_chat_repl_survives_a_full_context():
    long = "print('hello world') " * 20
    proc = run("runtime.chat", "--context", "24", "--max-new-tokens", "4", "--threads", "1", "--seed", "1",
               stdin=f"{long}\nhi\n")
    assert proc.returncode == 0, proc.stderr
    assert "send a shorter message" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.count("> ") == 3  # the refused turn, the answered one, the prompt that read EOF


def test_ctrl_c_cancels_the_turn_not_the_chat(tiny, monkeypatch, capsys):
    lines = iter(["def add(a, b):", "return a + b", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    from runtime import cli

    pieces = []
    real_write = cli.write

    def write(text):
        pieces.append(text)
        if len(pieces) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first reply streams
        real_write(text)

    monkeypatch.setattr(cli, "write", write)
    code = chat_cli.main(["--package", str(tiny), "--max-new-tokens", "16", "--ignore-eos", "--threads", "1",
                          "--temperature", "0", "--stats"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "cancelled" in err
    stats = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert len(stats) == 1 and stats[0]["new_tokens"] == 16  # the second turn ran in full


def test_drop_oldest_accepts_a_first_turn_that_fits(tiny):
    model = runtime.load(tiny, EngineOptions(threads=1, context=48))
    config = GenerationConfig(40, GREEDY, stop_at_eos=False)
    message = "def add(a, b): return a + b  # " * 2
    n = len(model.encode(apply_template(model.manifest, "chat", message)))
    assert 24 < n <= 48 - 4  # fits, but not with the reply's full reserve (min(40, 48 // 2) = 24)
    out = model.chat(drop_oldest=True).send(message, config)
    assert out.tokens and out.finish_reason in ("context", "length", "stop")
    with pytest.raises(ContextFullError, match="send a shorter message"):
        model.chat(drop_oldest=True).send(message * 3, config)


def test_context_full_is_announced():
    proc = run("runtime.generate", "def f(x):", "--context", "12", "--max-new-tokens", "50", "--ignore-eos",
               "--threads", "1", stdin="")
    assert proc.returncode == 0 and "context is full (12 positions)" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- 12. thread-count cache


def test_concurrent_first_loads_keep_both_entries(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("PHI_EDGE_CACHE", str(tmp_path))
    manifest = load_manifest(tiny)
    calls = []

    def measure_b(_m, n, _p):
        calls.append(("b", n))
        return 0.01 / n

    def measure_a(_m, n, _p):  # while A measures, B (another process) measures and writes its entry
        calls.append(("a", n))
        if len(calls) == 1:
            threads.auto_threads(manifest, "low-power", measure_b)
        return 0.01

    a = threads.auto_threads(manifest, "latency", measure_a)
    b = threads.auto_threads(manifest, "low-power", measure_b)
    n_calls = len(calls)
    assert threads.auto_threads(manifest, "latency", measure_a) == a == 1
    assert threads.auto_threads(manifest, "low-power", measure_b) == b
    assert len(calls) == n_calls  # both cached: nothing measured again
    assert len(list((tmp_path / "threads").glob("*.json"))) == 2


def test_cache_entries_that_cannot_be_trusted_are_measured_again(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("PHI_EDGE_CACHE", str(tmp_path))
    manifest = load_manifest(tiny)
    calls = []
    measure = lambda _m, n, _p: calls.append(n) or 0.01  # noqa: E731
    threads.auto_threads(manifest, "latency", measure)
    (entry,) = (tmp_path / "threads").glob("*.json")
    for damage in ("{not json", "[1, 2]", json.dumps({**json.loads(entry.read_text()), "threads": 100000}),
                   json.dumps({**json.loads(entry.read_text()), "threads": "2"})):
        entry.write_text(damage)
        before = len(calls)
        assert threads.auto_threads(manifest, "latency", measure) == 1
        assert len(calls) > before


def test_cache_key_names_affinity_and_logits_mode(tiny, tmp_path, monkeypatch, tok):
    manifest = load_manifest(tiny)
    everything = threads.device_key(manifest, "latency")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert threads.device_key(manifest, "latency") != everything and threads.usable_cores() == 1
    assert threads.candidates() == [1]
    with pytest.raises(ValueError, match="more than the 1 cores"):
        EngineOptions(threads=2)
    monkeypatch.undo()
    all_logits = make_package(tmp_path, tok, logits="all")[1]
    assert "logits all" in threads.device_key(load_manifest(all_logits), "latency")
    assert "logits last" in everything


def test_short_packages_load_with_the_measured_default(tmp_path, tok, monkeypatch):
    from export.options import ExportOptions
    from export.package import export_package

    monkeypatch.setenv("PHI_EDGE_CACHE", str(tmp_path / "cache"))
    ckpt = make_package(tmp_path, tok)[1].parent / "ckpt"
    for length in (2, 8):
        package = export_package(ckpt, tmp_path / f"short{length}", ExportOptions(precision="fp32", max_length=length),
                                 show_progress=False)
        assert runtime.load(package).backend.threads >= 1


def test_tests_do_not_write_the_users_cache():
    assert not threads.cache_dir().is_relative_to(Path.home() / ".cache" / "phi-edge")


# ---------------------------------------------------------------- 13. bounded logits buffers


def test_all_logits_buffers_stay_bounded(tmp_path, tok):
    package = make_package(tmp_path, tok, logits="all")[1]
    backend = OrtBackend(load_manifest(package), ONE)
    backend.step(list(range(1, 101)))  # the longest step: 100 rows
    tracemalloc.start()
    try:
        for n in range(1, 100):  # 99 other step lengths: 9.7 MiB if each kept its own buffer
            backend.truncate(0)
            backend.step(list(range(1, n + 1)))
            assert backend.last_logits().shape == (n, 512)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 1 << 20, held
