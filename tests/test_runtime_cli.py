"""python -m runtime.generate / runtime.chat: end to end in a subprocess, and every bad input as one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import stats
from runtime.generate import main
from runtime.manifest import MANIFEST
from runtime.pipeline import DEFAULT_PACKAGE
from tests.test_runtime import make_package, make_tokenizer

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"}


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The demo package when it is there, else a tiny random one."""
    if (DEFAULT_PACKAGE / MANIFEST).is_file():
        return DEFAULT_PACKAGE
    folder = tmp_path_factory.mktemp("cli")
    return make_package(folder, make_tokenizer(folder / "tokenizer.json"))[1]


def cli(module: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=ENV, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_generate_end_to_end(package):
    run = cli("runtime.generate", "def add(a, b):", "--package", str(package), "--temperature", "0",
              "--max-new-tokens", "16", "--ignore-eos", "--stats", "--verify")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("def add(a, b):") and len(run.stdout) > len("def add(a, b):\n")
    record = json.loads(run.stderr.strip().splitlines()[-1])
    assert set(record) == set(stats.KEYS) and record[stats.NEW_TOKENS] == 16
    assert record[stats.DECODE_TOKENS_PER_S] > 0 and record[stats.PEAK_RSS_BYTES] > 0
    again = cli("runtime.generate", "-", "--package", str(package), "--temperature", "0", "--max-new-tokens", "16",
                "--ignore-eos", stdin="def add(a, b):")
    assert again.returncode == 0 and again.stdout == run.stdout  # greedy is deterministic; "-" reads stdin


def test_chat_end_to_end(package):
    run = cli("runtime.chat", "--package", str(package), "--max-new-tokens", "8", "--seed", "1", "--stats",
              stdin="hello\n/reset\nhi there\nand then?\n")
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert len(records) == 3 and run.stdout.count("> ") == 5  # three replies, then the prompt that read EOF


def test_ctrl_c_exits_130_without_traceback(package):
    proc = subprocess.Popen([sys.executable, "-m", "runtime.chat", "--package", str(package)], cwd=ROOT, env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().startswith("chat with")
    assert proc.stdout.read(2) == "> "  # input() wrote its prompt: the chat is now blocked reading stdin
    # stdin stays open until the process has exited, so EOF cannot win the race. A signal that lands after input()
    # flushed its prompt but before its read() began is only noted (CPython checks for signals when a system call
    # returns), so a busy machine can leave the read blocked; a second Ctrl-C interrupts it, as it would a user's.
    for _ in range(6):
        proc.send_signal(signal.SIGINT)
        try:
            status = proc.wait(timeout=5)  # a clean exit takes well under a second
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.kill()
        raise AssertionError("Ctrl-C did not end the chat within 30 s")
    assert status == 130
    err = proc.stderr.read()
    proc.stdin.close()
    assert "Traceback" not in err, err


def _edit_manifest(folder: Path, **changes) -> None:
    data = json.loads((folder / MANIFEST).read_text())
    data.update(changes)
    (folder / MANIFEST).write_text(json.dumps(data))


def _corrupt_weights(folder: Path) -> None:
    with open(folder / "model.onnx.data", "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 0xFF]))


BAD = {
    "missing package": (["x", "--package", "{tmp}/nowhere"], None, "does not exist"),
    "unknown format version": (["x", "--package", "{copy}"], lambda p: _edit_manifest(p, format_version=99),
                               "format version 99"),
    "corrupt weights": (["x", "--package", "{copy}", "--verify"], _corrupt_weights, "sha256"),
    "prompt longer than context": (["x " * 40, "--package", "{pkg}", "--context", "16"], None,
                                   "context holds 16"),
    "negative temperature": (["x", "--package", "{pkg}", "--temperature", "-0.5"], None, "temperature"),
    "top-p zero": (["x", "--package", "{pkg}", "--top-p", "0"], None, "top-p"),
    "top-p above one": (["x", "--package", "{pkg}", "--top-p", "1.5"], None, "top-p"),
    "empty prompt": (["", "--package", "{pkg}"], None, "prompt is empty"),
    "unknown template": (["x", "--package", "{pkg}", "--template", "poem"], None, "template 'poem'"),
    "unknown option": (["x", "--package", "{pkg}", "--warp", "9"], None, "--warp"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_2(case, package, tmp_path, capsys):
    argv, damage, message = BAD[case]
    copy = tmp_path / "copy"
    if damage is not None:
        shutil.copytree(package, copy)
        damage(copy)
    argv = [a.format(tmp=tmp_path, copy=copy, pkg=package) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_missing_package_in_a_real_process(tmp_path):
    run = cli("runtime.generate", "x", "--package", str(tmp_path / "nowhere"))
    assert run.returncode == 2 and run.stderr.startswith("error: ") and "Traceback" not in run.stderr


def test_missing_demo_package_says_how_to_make_it(tmp_path, monkeypatch):
    import runtime.pipeline

    monkeypatch.setattr(runtime.pipeline, "DEFAULT_PACKAGE", tmp_path / "demo")
    with pytest.raises(FileNotFoundError, match="python -m export"):
        runtime.pipeline.load(tmp_path / "demo")


def test_json_output_and_model_flag(package):
    run = cli("runtime.generate", "import os", "--model", str(package), "--temperature", "0",
              "--max-new-tokens", "8", "--ignore-eos", "--json")
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    assert record["finish_reason"] == "length" and len(record["tokens"]) == 8
    assert set(record["stats"]) == set(stats.KEYS) and isinstance(record["text"], str)


def test_generate_chat_flag_runs_the_conversation_loop(package):
    run = cli("runtime.generate", "--chat", "--model", str(package), "--max-new-tokens", "6", "--seed", "3",
              "--stats", stdin="hello\nand then?\n")
    assert run.returncode == 0, run.stderr
    assert len([line for line in run.stderr.splitlines() if line.startswith("{")]) == 2
