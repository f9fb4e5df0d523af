"""train.data on damaged and hostile corpora (issue 21 E, K, M and the one-line errors): truncated or corrupt
compressed files are errors naming the file, never a shorter corpus; a huge record is encoded in bounded pieces
with the same tokens; killed parallel runs leave no worker behind; SIGTERM exits 143 as in every CLI."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from train.data import encode_long, load_source, pieces, tokenize_to_shards

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "runtime" / "demo" / "tokenizer.json"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _records(n: int, words: int = 30) -> bytes:
    rng = random.Random(n)
    vocab = ["def", "return", "self", "for", "x", "value", "print", "import"]
    return "".join(json.dumps({"text": " ".join(rng.choice(vocab) for _ in range(words)), "i": i}) + "\n"
                   for i in range(n)).encode()


def _data(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.data", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=ENV, timeout=timeout)


def _one_line(proc: subprocess.CompletedProcess, expect: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expect in last and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def compressed(tmp_path_factory) -> Path:
    zstandard = pytest.importorskip("zstandard")
    folder = tmp_path_factory.mktemp("compressed")
    data = _records(3000)
    half = len(data) // 2
    frames = zstandard.ZstdCompressor().compress(data[:half]) + zstandard.ZstdCompressor().compress(data[half:])
    (folder / "good.jsonl.zst").write_bytes(frames)
    (folder / "cut.jsonl.zst").write_bytes(frames[:len(frames) * 3 // 4])  # its second frame stops short
    (folder / "corrupt.jsonl.zst").write_bytes(frames[:4] + bytes(64) + frames[68:])
    packed = gzip.compress(data)
    (folder / "good.jsonl.gz").write_bytes(packed)
    (folder / "cut.jsonl.gz").write_bytes(packed[:len(packed) // 2])
    return folder


def test_multi_frame_zstandard_is_read_whole(compressed, tmp_path):
    info = tokenize_to_shards([compressed / "good.jsonl.zst"], TOKENIZER, tmp_path / "out", progress=False)
    assert info.num_documents == 3000  # both frames


@pytest.mark.parametrize("name, expect", [("cut.jsonl.zst", "cut.jsonl.zst is truncated or corrupt"),
                                          ("corrupt.jsonl.zst", "corrupt.jsonl.zst"),
                                          ("cut.jsonl.gz", "cut.jsonl.gz is truncated or corrupt")])
def test_truncated_or_corrupt_compressed_input_is_refused_by_name(compressed, tmp_path, name, expect):
    proc = _data("shards", "--input", compressed / "good.jsonl.gz", compressed / name, "--tokenizer", TOKENIZER,
                 "--out", tmp_path / "out")
    _one_line(proc, expect)
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize("line, expect", [
    ('{"text": ' + "[" * 100000 + "]" * 100000 + "}", "nests JSON too deeply"),
    ('{"text": ["a"]}', "is a list, not text"),
])
def test_hostile_records_are_one_line(tmp_path, line, expect):
    (tmp_path / "bad.jsonl").write_text(line + "\n")
    _one_line(_data("shards", "--input", tmp_path / "bad.jsonl", "--tokenizer", TOKENIZER, "--out", tmp_path / "o"),
              expect)


def test_a_lone_surrogate_and_a_bom_are_read_as_text(tmp_path):
    (tmp_path / "odd.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "a\\ud800b"}\n{"text": "plain"}\n')
    info = tokenize_to_shards([tmp_path / "odd.jsonl"], TOKENIZER, tmp_path / "out", progress=False)
    assert info.num_documents == 2


def test_vocab_size_is_bounded_before_the_trainer_allocates(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n")
    _one_line(_data("tokenizer", "--input", tmp_path / "a.txt", "--vocab-size", 10**9, "--out", tmp_path / "t.json"),
              "at most 1048576")


def test_long_records_are_encoded_in_pieces_with_the_same_tokens(tmp_path):
    """issue 21 K: a record of any size is encoded PIECE_CHARS at a time (memory bounded per record: a 100 MB record
    peaked at 840 MB RSS, 17.5 GB before); cut before a space between words, the tokens equal the whole text's."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    rng = random.Random(3)
    words = ["def", "  return", "self", "\n", "x", "é", "日本語", "  ", "\t", "it's", "(", "))"]
    text = "".join(rng.choice(words) + (" " if rng.random() < 0.7 else "") for _ in range(60000))
    cut = pieces(text, 5000)
    assert len(cut) > 20 and "".join(cut) == text and max(map(len, cut)) <= 5000
    assert np.concatenate(encode_long(tok, text)).tolist() == tok.encode(text, add_special_tokens=False).ids
    (tmp_path / "big.jsonl").write_text(json.dumps({"text": text * 5}) + "\n")
    info = tokenize_to_shards([tmp_path / "big.jsonl"], TOKENIZER, tmp_path / "out", progress=False)
    stored = load_source(tmp_path / "out").read(0, info.num_tokens)
    assert stored[:-1].tolist() == tok.encode(text * 5, add_special_tokens=False).ids


def test_a_shard_folder_given_as_data_is_told_what_data_takes(tmp_path):
    (tmp_path / "a.txt").write_text("def f(x):\n    return x\n" * 50)
    tokenize_to_shards([tmp_path / "a.txt"], TOKENIZER, tmp_path / "shards", progress=False)
    proc = subprocess.run([sys.executable, "-m", "train", "--preset", "tiny-phi-1_5", "--data", tmp_path / "shards",
                           "--out", tmp_path / "run"], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    _one_line(proc, "is a shard folder (it has source.json); --data takes a mixture file")


def _workers(parent: int) -> list[int]:
    """The live child processes of `parent` (its multiprocessing workers)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "State:\tZ" in status.read_text())


@pytest.fixture(scope="module")
def slow_inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slow")
    rng = random.Random(0)
    for i in range(12):
        (folder / f"f{i}.txt").write_text(" ".join(rng.choice(["def", "return", "x", "self"]) for _ in range(300000)))
    return folder


@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 143)])
def test_killing_a_parallel_run_leaves_no_worker_and_keeps_finished_slices(slow_inputs, tmp_path, sig, code):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "train.data", "shards", "--input", slow_inputs, "--tokenizer",
                             TOKENIZER, "--out", out, "--jobs", "2", "--slices", "12"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline and not list((tmp_path / "out.parts").glob("slice-*/source.json")):
        workers = _workers(proc.pid) or workers
        time.sleep(0.05)
    workers = _workers(proc.pid) or workers
    assert workers, "no worker process was seen"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    if sig == signal.SIGTERM:
        assert "Traceback" not in err and "finished slices are kept" in err, err[-2000:]
    deadline = time.monotonic() + 15
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers), "a worker outlived its parent"
    rerun = _data("shards", "--input", slow_inputs, "--tokenizer", TOKENIZER, "--out", out, "--jobs", "2",
                  "--slices", "12")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert load_source(out).info.num_documents == 12
