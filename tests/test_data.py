"""Data pipeline: tokenizer, shard folders, mixtures, sampler, stdlib corpus. Real files, real tokenizers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from train.data import (EOS_TOKEN, build_stdlib_corpus, load_source, main, python_stdlib_files, split_modules,
                        tokenize_to_shards, train_tokenizer, write_source)
from train.mixture import MixtureSampler, heldout_batches, load_mixture, load_sources

REPO = Path(__file__).resolve().parents[1]

DOCS = [
    "def f(x):\n\treturn x  +   1\n\n\n# tabs\tand   runs of spaces     end\n",
    "Ünïcödé: naïve café, 日本語のテキスト, emoji 🐍🚀, math ∑ ∫ √ — dash\n",
    "class A:\n    def __init__(self):\n        self.s = 'a literal <|endoftext|> inside text'\n",
    "    leading spaces\r\nwindows line\r\n\u00a0nbsp and zero\u200bwidth",
]
HARD = ["", " ", "  x", "\t\t\n", "héllo wörld", "🐍" * 3, "a<|endoftext|>b", "\x00\x01 ctrl", "   \n   "]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[list[Path], Path]:
    root = tmp_path_factory.mktemp("corpus")
    files = []
    for i, text in enumerate(DOCS):
        f = root / f"doc{i}.txt"
        f.write_bytes(text.encode("utf-8"))  # exact bytes, no newline translation
        files.append(f)
    (root / "empty.txt").write_text("")
    tok = train_tokenizer(files * 3, vocab_size=320, out=tmp_path_factory.mktemp("tok") / "tokenizer.json")
    return files, tok


def _source(tmp: Path, name: str, tokens: np.ndarray, shard_tokens: int = 4096):
    write_source(tmp / name, [tokens], vocab_size=2**16 - 1, shard_tokens=shard_tokens)
    return load_source(tmp / name)


# ---------------------------------------------------------------- tokenizer and shards


def test_tokenizer_layout_and_hard_strings(corpus):
    _, tok_path = corpus
    tok = Tokenizer.from_file(str(tok_path))
    assert tok.token_to_id(EOS_TOKEN) == 0
    assert 257 <= tok.get_vocab_size() <= 320
    tok.encode_special_tokens = True
    for s in HARD + DOCS:
        assert tok.decode(tok.encode(s).ids, skip_special_tokens=False) == s


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_tokenizer_roundtrips_any_text(corpus, text):
    tok = Tokenizer.from_file(str(corpus[1]))
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


def test_shards_roundtrip(corpus, tmp_path):
    files, tok_path = corpus
    inputs = files[:2] + [files[0].parent / "empty.txt"] + files[2:]
    info = tokenize_to_shards(inputs, tok_path, tmp_path / "src", shard_tokens=40)  # several shards
    assert len(info.shards) > 1 and info.num_documents == len(DOCS) and info.dtype == "uint16"
    src = load_source(tmp_path / "src")
    tokens = src.read(0, len(src))
    assert isinstance(src.shards[0], np.memmap)
    assert int((tokens == 0).sum()) == len(DOCS)  # the literal "<|endoftext|>" in DOCS[2] stays text
    tok = Tokenizer.from_file(str(tok_path))
    assert tok.decode(tokens.tolist(), skip_special_tokens=False) == "".join(d + EOS_TOKEN for d in DOCS)
    meta = json.loads((tmp_path / "src" / "source.json").read_text())
    assert meta["format"] == "phi-shards/1" and meta["num_tokens"] == len(tokens) and meta["eos_id"] == 0
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == sorted(["source.json"] + [s["file"] for s in meta["shards"]])
    assert not list(tmp_path.glob("*.tmp-*"))


def test_out_dir_rules(corpus, tmp_path):
    files, tok_path = corpus
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty; pass --force"):
        tokenize_to_shards(files, tok_path, out)
    with pytest.raises(ValueError, match="refusing to replace"):  # --force only replaces our own folders
        tokenize_to_shards(files, tok_path, out, force=True)
    (out / "notes.txt").unlink()
    tokenize_to_shards(files[:1], tok_path, out)  # empty folder is fine
    info = tokenize_to_shards(files, tok_path, out, force=True)
    assert load_source(out).info.num_documents == info.num_documents == len(files)


def test_empty_corpus_and_missing_inputs(corpus, tmp_path):
    _, tok_path = corpus
    empty = tmp_path / "e.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty corpus"):
        tokenize_to_shards([empty, empty], tok_path, tmp_path / "o")
    with pytest.raises(ValueError, match="empty corpus"):
        train_tokenizer([empty], 300, tmp_path / "t.json")
    with pytest.raises(ValueError, match="no input files"):
        tokenize_to_shards([], tok_path, tmp_path / "o")
    with pytest.raises(ValueError, match="vocab-size 257"):
        train_tokenizer([empty], 100, tmp_path / "t.json")
    assert not (tmp_path / "o").exists()


def test_load_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; create it with python -m train.data shards"):
        load_source(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match="source.json is missing"):
        load_source(tmp_path / "d")
    src = _source(tmp_path, "s", np.arange(100))
    (src.path / "shard_00000.bin").write_bytes(b"\0\0")
    with pytest.raises(ValueError, match="should hold 100 uint16 tokens"):
        load_source(src.path)


# ---------------------------------------------------------------- mixtures


def _mixture_file(tmp: Path, sources, heldout=()) -> Path:
    path = tmp / "mix.json"
    path.write_text(json.dumps({"format": "phi-mixture/1", "sources": sources, "heldout": list(heldout)}))
    return path


def test_load_mixture_resolves_and_normalises(tmp_path):
    _source(tmp_path, "a", np.arange(50))
    _source(tmp_path, "b", np.arange(50))
    path = _mixture_file(tmp_path, [{"name": "a", "path": "a", "weight": 4}, {"name": "b", "path": "b", "weight": 1}],
                         [{"name": "h", "path": "b"}])
    mix = load_mixture(path)
    assert mix.weights == pytest.approx((0.8, 0.2)) and mix.sources[0].path == tmp_path / "a"
    assert [s.num_tokens for s in load_sources(mix)] == [50, 50]


@pytest.mark.parametrize("weight", [0, -1.0, float("nan"), float("inf"), "1"])
def test_bad_weights(tmp_path, weight):
    _source(tmp_path, "a", np.arange(50))
    path = _mixture_file(tmp_path, [{"name": "code", "path": "a", "weight": weight}])
    with pytest.raises(ValueError, match=r"source 'code' has weight .*finite numbers > 0"):
        load_mixture(path)


def test_mixture_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="mixture file .* does not exist"):
        load_mixture(tmp_path / "none.json")
    with pytest.raises(ValueError, match="'sources' is empty"):
        load_mixture(_mixture_file(tmp_path, []))
    with pytest.raises(FileNotFoundError, match=r"source 'web' folder .*missing-dir does not exist; create it with "
                                                r"`python -m train.data shards"):
        load_mixture(_mixture_file(tmp_path, [{"name": "web", "path": "missing-dir", "weight": 1}]))
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(FileNotFoundError, match="empty-dir is empty"):
        load_mixture(_mixture_file(tmp_path, [{"name": "web", "path": "empty-dir", "weight": 1}]))
    _source(tmp_path, "a", np.arange(50))
    with pytest.raises(ValueError, match="unique"):
        load_mixture(_mixture_file(tmp_path, [{"name": "x", "path": "a", "weight": 1}] * 2))


@pytest.mark.parametrize("name,weights", [("phi-1_5", [0.8, 0.2]), ("phi-1_5-web", [0.4, 0.2, 0.4]),
                                          ("phi-1_5-web-only", [0.8, 0.2])])
def test_example_mixtures(name, weights):
    mix = load_mixture(REPO / "train" / "mixtures" / f"{name}.json", check_paths=False)
    assert list(mix.weights) == pytest.approx(weights)


# ---------------------------------------------------------------- sampler


def _tagged_sources(tmp: Path, sizes: list[int]):
    """Source k holds tokens k*10000 + position % 10000, so every row tells where it came from."""
    return [_source(tmp, f"s{k}", k * 10000 + np.arange(n) % 10000, shard_tokens=1000) for k, n in enumerate(sizes)]


@pytest.mark.parametrize("weights", [[0.8, 0.2], [0.4, 0.2, 0.4]])
def test_sampler_frequencies_and_rows(tmp_path, weights):
    sources = _tagged_sources(tmp_path, [3000 + 500 * k for k in range(len(weights))])
    sampler = MixtureSampler(sources, weights, seq_len=15, seed=1)
    picks = []
    for _ in range(10):
        rows = sampler.next_batch(1000)
        assert rows.shape == (1000, 16) and rows.dtype == np.int64
        assert np.all(rows // 10000 == sampler.last_sources[:, None])  # row content matches its source
        assert np.all(np.diff(rows % 10000, axis=1) == 1)  # contiguous windows (no wrap at these sizes)
        picks.append(sampler.last_sources)
    freq = np.bincount(np.concatenate(picks), minlength=len(weights)) / 10000
    assert np.abs(freq - weights).max() < 0.02


def test_sampler_epoch_covers_every_window_once(tmp_path):
    (src,) = _tagged_sources(tmp_path, [1000])  # 62 windows of 16 and 8 tokens of slack
    sampler = MixtureSampler([src], [1.0], seq_len=15, seed=3)
    for _ in range(3):  # three epochs, each a fresh permutation and offset
        starts = sampler.next_batch(62)[:, 0]
        assert len(set(starts.tolist())) == 62
        assert len(set((starts % 16).tolist())) == 1  # one offset per epoch: windows do not overlap


def test_sampler_determinism_and_resume(tmp_path):
    sources = _tagged_sources(tmp_path, [700, 300])
    make = lambda seed: MixtureSampler(sources, [0.6, 0.4], seq_len=7, seed=seed)  # noqa: E731
    a, b = make(0), make(0)
    assert np.array_equal(a.next_batch(50), b.next_batch(50))
    assert not np.array_equal(make(0).next_batch(50), make(1).next_batch(50))
    split = make(0)
    assert np.array_equal(np.concatenate([split.next_batch(20), split.next_batch(30)]), make(0).next_batch(50))

    run = make(0)
    for _ in range(7):  # past an epoch boundary of the small source
        run.next_batch(32)
    state = json.loads(json.dumps(run.state_dict()))
    assert state["draws"] == 7 * 32
    resumed = make(0)
    resumed.load_state_dict(state)
    for _ in range(5):
        assert np.array_equal(run.next_batch(32), resumed.next_batch(32))
    with pytest.raises(ValueError, match="seq_len=7 but this sampler has 9"):
        MixtureSampler(sources, [0.6, 0.4], seq_len=9, seed=0).load_state_dict(state)


def test_sampler_rejects_short_source(tmp_path):
    sources = _tagged_sources(tmp_path, [100, 10])
    with pytest.raises(ValueError, match=r"source 's1' .* has 10 tokens, fewer than seq_len \+ 1 = 16"):
        MixtureSampler(sources, [0.5, 0.5], seq_len=15, seed=0)
    with pytest.raises(ValueError, match="finite and > 0"):
        MixtureSampler(sources[:1], [math.nan], seq_len=4, seed=0)


def test_heldout_batches(tmp_path):
    (src,) = _tagged_sources(tmp_path, [101])
    rows = np.concatenate(list(heldout_batches(src, seq_len=10, batch_size=4)))
    assert rows.shape == (10, 11)
    assert np.array_equal(rows[:, 1:].ravel(), np.arange(1, 101))  # targets tile the stream exactly once
    assert np.array_equal(np.concatenate(list(heldout_batches(src, 10, batch_size=3))), rows)  # deterministic
    assert sum(len(b) for b in heldout_batches(src, seq_len=10, max_tokens=35)) == 3
    with pytest.raises(ValueError, match="fewer than seq_len"):
        next(heldout_batches(src, seq_len=200))


# ---------------------------------------------------------------- splits, stdlib, CLI


def test_split_modules_deterministic_and_stable():
    root = Path("/lib")
    files = [root / f"pkg{i % 7}" / f"mod{i}.py" for i in range(400)]
    train, held = split_modules(files, 0.1, seed=0, root=root)
    assert (train, held) == split_modules(files, 0.1, seed=0, root=root)
    assert sorted(train + held) == sorted(files) and 20 <= len(held) <= 60
    more = files + [root / "new" / f"x{i}.py" for i in range(100)]
    _, held_more = split_modules(more, 0.1, seed=0, root=root)
    assert [f for f in held_more if f in files] == held  # adding files moves nobody
    assert split_modules(files, 0.1, seed=1, root=root)[1] != held
    with pytest.raises(ValueError, match="heldout_fraction=1.0"):
        split_modules(files, 1.0, seed=0)


def test_python_stdlib_files():
    files = python_stdlib_files()
    assert len(files) > 300 and all(f.suffix == ".py" for f in files) and files == sorted(files)
    assert {"os.py", "argparse.py"} <= {f.name for f in files}
    assert any(f.as_posix().endswith("/json/__init__.py") for f in files)
    bad = {"test", "tests", "idle_test", "site-packages", "dist-packages"}
    assert not [f for f in files if bad & set(f.parts)]


def test_build_stdlib_corpus_small(tmp_path):
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = [f for f in python_stdlib_files() if f.parent == root and f.stat().st_size < 6000][:30]
    summary = build_stdlib_corpus(tmp_path / "c", vocab_size=300, heldout_fraction=0.3, seed=0, files=files)
    assert summary["train_files"] + summary["heldout_files"] == len(files) and summary["heldout_files"] > 0
    split = json.loads((tmp_path / "c" / "split.json").read_text())
    assert len(split["heldout"]) == summary["heldout_files"] and not split["heldout"][0].startswith("/")
    mix = load_mixture(tmp_path / "c" / "mixture.json")
    assert [s.name for s in mix.sources] == ["stdlib-train"] and mix.heldout[0].name == "stdlib-heldout"
    assert MixtureSampler.from_mixture(mix, seq_len=32, seed=0).next_batch(4).shape == (4, 33)
    assert load_source(mix.heldout[0].path).num_tokens == summary["heldout_tokens"]
    with pytest.raises(ValueError, match="--force"):
        build_stdlib_corpus(tmp_path / "c", vocab_size=300, files=files)


def test_cli_in_process(corpus, tmp_path, capsys):
    files, _ = corpus
    folder = files[0].parent
    assert main(["tokenizer", "--input", str(folder), "--glob", "doc*.txt", "--vocab-size", "300",
                 "--out", str(tmp_path / "tok.json")]) == 0
    assert main(["shards", "--input", str(folder), "--tokenizer", str(tmp_path / "tok.json"),
                 "--out", str(tmp_path / "s")]) == 0
    assert load_source(tmp_path / "s").info.num_documents == len(DOCS)
    capsys.readouterr()
    assert main(["shards", "--input", str(folder), "--tokenizer", str(tmp_path / "tok.json"),
                 "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: output folder")
    assert main(["stdlib", "--out", str(tmp_path / "x"), "--heldout-fraction", "1.5"]) == 2
    assert "heldout_fraction=1.5" in capsys.readouterr().err


@pytest.mark.parametrize("args", [
    ["shards", "--input", "/no/such/dir", "--tokenizer", "t.json", "--out", "o"],
    ["stdlib", "--out", "o", "--vocab-size", "lots"],
])
def test_cli_bad_call_exits_2_with_one_line(args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train.data", *args], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": ""}, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""
