"""Documents from corpora as they come: one document per record, streamed, never a whole file in memory.

    format   what one document is                         how a file is recognised (--format auto)
    text     a whole file                                 anything else
    jsonl    one JSON object per line, its --text-field   name ends in .jsonl or .json (before .gz / .zst)
    parquet  one row, its --text-field column             the file starts with the magic bytes PAR1
    arrow    one row, its --text-field column             name ends in .arrow (Arrow IPC stream or file): what
                                                          Hugging Face datasets' save_to_disk writes; a folder
                                                          given to train.data with its state.json stands for
                                                          its .arrow files (hf_dataset_files)

JSON Lines may be compressed with gzip or zstandard (told by their magic bytes, not their names). Records whose
text is empty are skipped; a record without the field, or with a non-string one, is an error naming the file,
the line and the fix.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

FORMATS = ("auto", "text", "jsonl", "parquet", "arrow")
DEFAULT_TEXT_FIELD = "text"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PARQUET_MAGIC = b"PAR1"
ARROW_FILE_MAGIC = b"ARROW1"
PARQUET_BATCH_ROWS = 1024  # rows read at a time: bounds memory on files of any size


@dataclass(frozen=True)
class RecordOptions:
    format: str = "auto"
    text_field: str = DEFAULT_TEXT_FIELD

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"--format {self.format!r} is unknown; choose one of {', '.join(FORMATS)}")
        if not self.text_field:
            raise ValueError("--text-field is empty; name the field that holds each record's text")


def _magic(path: Path, n: int = 4) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def detect_format(path: Path) -> str:
    """text, jsonl or parquet for `path` (see the module docstring)."""
    if _magic(path) == PARQUET_MAGIC:
        return "parquet"
    if Path(path).suffix.lower() == ".arrow":
        return "arrow"
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in (".gz", ".zst", ".zstd"):
        suffixes = suffixes[:-1]
    return "jsonl" if suffixes and suffixes[-1] in (".jsonl", ".json", ".ndjson") else "text"


def _open_text(path: Path) -> io.TextIOBase:
    """`path` as a text stream, decompressing gzip or zstandard by magic bytes."""
    magic = _magic(path)
    if magic.startswith(GZIP_MAGIC):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace", newline="")
    if magic == ZSTD_MAGIC:
        try:
            import zstandard
        except ImportError as e:
            raise ValueError(f"{path} is zstandard-compressed; pip install zstandard (part of phi-edge[train])") from e
        raw = open(path, "rb")
        stream = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")  # newline="": keep \r\n as is


def _text_of(value, where: str) -> str | None:
    """A record's text; None for a null one; anything but a string is refused, naming `where`."""
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{where} is a {type(value).__name__}, not text; pass --text-field with a string field")


def _jsonl(path: Path, field: str) -> Iterator[str]:
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n} is not JSON ({e.msg}); a JSON Lines file holds one object per "
                                 f"line (pass --format text to read it as plain text)") from e
            if not isinstance(record, dict) or field not in record:
                keys = ", ".join(list(record)[:8]) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"{path} line {n} has no field {field!r} (it has: {keys}); pass --text-field NAME")
            text = _text_of(record[field], f"{path} line {n}: field {field!r}")
            if text:
                yield text


def _parquet(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ValueError(f"{path} is Parquet; pip install pyarrow (part of phi-edge[train])") from e
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    if field not in names:
        raise ValueError(f"{path} has no column {field!r} (it has: {', '.join(names[:8])}); pass --text-field NAME")
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[field]):
        for value in batch.column(0).to_pylist():
            text = _text_of(value, f"{path}: column {field!r}")
            if text:
                yield text


def _arrow(path: Path, field: str) -> Iterator[str]:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source) if _magic(path, 6) == ARROW_FILE_MAGIC else pa.ipc.open_stream(source)
        names = reader.schema.names
        if field not in names:
            raise ValueError(f"{path} has no column {field!r} (it has: {', '.join(names[:8])}); pass --text-field NAME")
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches)) \
            if isinstance(reader, pa.ipc.RecordBatchFileReader) else reader
        for batch in batches:
            for value in batch.column(names.index(field)).to_pylist():
                text = _text_of(value, f"{path}: column {field!r}")
                if text:
                    yield text


def hf_dataset_files(folder: Path) -> list[Path] | None:
    """The .arrow files of a Hugging Face dataset saved with save_to_disk (state.json lists them); else None."""
    state = Path(folder) / "state.json"
    if not state.is_file():
        return None
    try:
        files = [Path(folder) / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    except (ValueError, KeyError, TypeError):
        return None
    return files


def _text(path: Path) -> Iterator[str]:
    with _open_text(path) as f:
        text = f.read()
    if text:
        yield text


def iter_documents(path: Path, options: RecordOptions = RecordOptions()) -> Iterator[str]:
    """The documents of one file, in order, streamed."""
    path = Path(path)
    kind = detect_format(path) if options.format == "auto" else options.format
    if kind == "jsonl":
        return _jsonl(path, options.text_field)
    if kind == "parquet":
        return _parquet(path, options.text_field)
    if kind == "arrow":
        return _arrow(path, options.text_field)
    return _text(path)
