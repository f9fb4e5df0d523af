"""Corpora as they come (train/records.py): one document per JSON Lines record or Parquet row, streamed,
with EOS between documents in the shards; errors name the file, the line and the fix."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from tokenizers import Tokenizer

from train.data import EOS_TOKEN, load_source, main, tokenize_to_shards, train_tokenizer
from train.records import RecordOptions, detect_format, iter_documents

RECORDS = ["def f(x):\n\treturn x + 1\n", "naïve café 🐍\r\nline two", "a literal <|endoftext|> stays text", "short"]


def _jsonl_bytes(records, field="text") -> bytes:
    lines = [json.dumps({"id": i, field: r, "meta": {"n": i}}, ensure_ascii=False) for i, r in enumerate(records)]
    return ("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n").encode()  # a blank line is skipped


@pytest.fixture()
def corpora(tmp_path) -> dict[str, Path]:
    raw = _jsonl_bytes(RECORDS)
    files = {"jsonl": tmp_path / "a.jsonl", "gz": tmp_path / "b.jsonl.gz", "zst": tmp_path / "c.jsonl.zst",
             "parquet": tmp_path / "d.parquet"}
    files["jsonl"].write_bytes(raw)
    files["gz"].write_bytes(gzip.compress(raw))
    files["zst"].write_bytes(zstandard.ZstdCompressor().compress(raw))
    pq.write_table(pa.table({"id": list(range(len(RECORDS))), "text": RECORDS}), files["parquet"], row_group_size=2)
    return files


def test_each_format_yields_one_document_per_record(corpora):
    for kind, path in corpora.items():
        assert detect_format(path) == ("parquet" if kind == "parquet" else "jsonl"), kind
        assert list(iter_documents(path)) == RECORDS, kind
    # a .txt file holding JSON is text unless told otherwise
    txt = corpora["jsonl"].with_suffix(".txt")
    txt.write_bytes(corpora["jsonl"].read_bytes())
    assert [d[:8] for d in iter_documents(txt)] == ['{"id": 0']
    assert list(iter_documents(txt, RecordOptions(format="jsonl"))) == RECORDS


def test_shards_hold_records_separated_by_eos(corpora, tmp_path):
    files = list(corpora.values())
    tok_path = train_tokenizer(files, vocab_size=300, out=tmp_path / "tok.json")
    info = tokenize_to_shards(files, tok_path, tmp_path / "src", shard_tokens=50)
    assert info.num_documents == 4 * len(RECORDS)  # before: one raw-JSON document per file
    tokens = load_source(tmp_path / "src").read(0, info.num_tokens)
    tok = Tokenizer.from_file(str(tok_path))
    assert tok.decode(tokens.tolist(), skip_special_tokens=False) == "".join(r + EOS_TOKEN for r in RECORDS) * 4
    assert int((tokens == 0).sum()) == info.num_documents  # the literal <|endoftext|> in a record stays text


def test_text_field_and_bad_records(tmp_path, capsys):
    other = tmp_path / "o.jsonl"
    other.write_bytes(_jsonl_bytes(RECORDS, field="content"))
    with pytest.raises(ValueError, match=r"o.jsonl line 1 has no field 'text' \(it has: id, content, meta\); "
                                         r"pass --text-field NAME"):
        list(iter_documents(other))
    assert list(iter_documents(other, RecordOptions(text_field="content"))) == RECORDS
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(ValueError, match="line 2: field 'text' is a int, not text"):
        list(iter_documents(bad))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match="broken.jsonl line 2 is not JSON"):
        list(iter_documents(broken))
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": RECORDS}), table)
    with pytest.raises(ValueError, match=r"has no column 'text' \(it has: body\)"):
        list(iter_documents(table))
    # the CLI: one line, exit 2, nothing written
    tok = train_tokenizer([table], 300, tmp_path / "tok.json", RecordOptions(text_field="body"))
    assert main(["shards", "--input", str(other), "--tokenizer", str(tok), "--out", str(tmp_path / "s")]) == 2
    lines = [x for x in capsys.readouterr().err.replace("\r", "\n").splitlines() if x.startswith("error")]
    assert len(lines) == 1 and "pass --text-field NAME" in lines[0], lines  # one line, not a traceback
    assert not (tmp_path / "s").exists()
    assert main(["shards", "--input", str(other), "--tokenizer", str(tok), "--out", str(tmp_path / "s"),
                 "--text-field", "content"]) == 0
    assert load_source(tmp_path / "s").info.num_documents == len(RECORDS)


def test_parquet_streams_in_batches(tmp_path, monkeypatch):
    import train.records as records

    monkeypatch.setattr(records, "PARQUET_BATCH_ROWS", 3)
    seen = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *a, **k):
        for batch in real(self, *a, **k):
            seen.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    rows = [f"doc {i}" for i in range(10)]
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": rows, "other": np.arange(10)}), path)
    assert list(iter_documents(path)) == rows
    assert max(seen) <= 3 and sum(seen) == 10


def test_hugging_face_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    from train.data import expand_inputs

    datasets.Dataset.from_dict({"text": RECORDS + [""], "id": list(range(len(RECORDS) + 1))}).save_to_disk(
        str(tmp_path / "ds"))
    files = expand_inputs([tmp_path / "ds"])
    assert [f.suffix for f in files] == [".arrow"]  # not state.json or dataset_info.json as text
    assert list(iter_documents(files[0])) == RECORDS  # the empty record is skipped
    table = tmp_path / "file.arrow"  # the Arrow file format (ARROW1) too
    with pa.ipc.new_file(str(table), pa.schema([("body", pa.string())])) as w:
        w.write_table(pa.table({"body": RECORDS}))
    assert list(iter_documents(table, RecordOptions(text_field="body"))) == RECORDS
