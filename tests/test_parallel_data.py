"""train/parallel.py: slices tokenized by several processes and machines, resumable, merged into one source."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from train.data import load_source, main, tokenize_to_shards, train_tokenizer
from train.parallel import merge_sources, parse_part, plan_slices, tokenize_parallel


@pytest.fixture()
def corpus(tmp_path):
    files = []
    for i in range(6):
        f = tmp_path / "in" / f"part{i}.jsonl"
        f.parent.mkdir(exist_ok=True)
        f.write_text("".join(json.dumps({"text": f"file {i} record {j}: " + "word " * (i * 7 + j)}) + "\n"
                             for j in range(5)))
        files.append(f)
    tok = train_tokenizer(files, 300, tmp_path / "tok.json")
    return files, tok


def _documents(path: Path) -> Counter:
    src = load_source(path)
    ids = src.read(0, src.num_tokens)
    cuts = np.flatnonzero(ids == src.info.eos_id)
    return Counter(tuple(d) for d in np.split(ids, cuts + 1) if d.size)


def test_processes_give_the_single_process_documents(corpus, tmp_path):
    files, tok = corpus
    one = tokenize_to_shards(files, tok, tmp_path / "one")
    many = tokenize_parallel(files, tok, tmp_path / "many", jobs=2, slices=4, shard_tokens=64)
    assert many.num_tokens == one.num_tokens and many.num_documents == one.num_documents == 30
    assert _documents(tmp_path / "many") == _documents(tmp_path / "one")
    assert not (tmp_path / "many.parts").exists()  # merged and cleaned up


def test_machines_and_resume(corpus, tmp_path, capsys):
    files, tok = corpus
    out = tmp_path / "src"
    assert tokenize_parallel(files, tok, out, jobs=1, slices=5, part=(0, 2)) is None  # slices 0, 2, 4
    done = sorted(p.name for p in (tmp_path / "src.parts").glob("slice-*"))
    assert done == ["slice-00000", "slice-00002", "slice-00004"] and not out.exists()
    assert "3 of 5 slices" in capsys.readouterr().err
    stamp = (tmp_path / "src.parts/slice-00002/source.json").stat().st_mtime_ns
    assert tokenize_parallel(files, tok, out, jobs=1, slices=5, part=(0, 2)) is None  # resume: nothing to redo
    assert (tmp_path / "src.parts/slice-00002/source.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="holds slices of another job"):
        tokenize_parallel(files[:4], tok, out, jobs=1, slices=5, part=(1, 2))
    info = tokenize_parallel(files, tok, out, jobs=1, slices=5, part=(1, 2))  # the other machine: completes
    assert info.num_documents == 30 and _documents(out) == _documents(tokenize_to_shards(files, tok, tmp_path / "ref").path)


def test_merge_refuses_mixed_tokenizers(corpus, tmp_path):
    files, tok = corpus
    odd = tmp_path / "odd.txt"
    odd.write_text("zebra quartz jukebox " * 50)
    other = train_tokenizer([odd], 300, tmp_path / "other.json")
    a = tokenize_to_shards(files[:3], tok, tmp_path / "a").path
    b = tokenize_to_shards(files[3:], other, tmp_path / "b").path
    with pytest.raises(ValueError, match="different tokenizers cannot be one source"):
        merge_sources([a, b], tmp_path / "ab")
    c = tokenize_to_shards(files[3:], tok, tmp_path / "c").path
    info = merge_sources([a, c], tmp_path / "ac")
    assert info.num_documents == 30 and load_source(tmp_path / "ac").num_tokens == info.num_tokens


def test_plan_and_cli_errors(corpus, tmp_path, capsys):
    files, tok = corpus
    groups = plan_slices(files, 3)
    assert sorted(f for g in groups for f in g) == sorted(files) and len(groups) == 3
    sizes = [sum(f.stat().st_size for f in g) for g in groups]
    assert max(sizes) - min(sizes) <= max(f.stat().st_size for f in files)  # balanced by bytes
    assert parse_part("3/8") == (3, 8)
    assert main(["shards", "--input", *map(str, files), "--tokenizer", str(tok), "--out", str(tmp_path / "o"),
                 "--part", "2/2"]) == 2
    assert "--part '2/2' is not K/M with 0 <= K < M" in capsys.readouterr().err
    assert main(["shards", "--input", *map(str, files), "--tokenizer", str(tok), "--out", str(tmp_path / "o"),
                 "--jobs", "2"]) == 0
    assert load_source(tmp_path / "o").info.num_documents == 30
