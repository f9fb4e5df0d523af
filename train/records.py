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
import zlib
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


class _Checked(io.RawIOBase):
    """A decompressing byte stream whose damage is an error naming the file: gzip's EOFError or a bad CRC, or a
    zstandard stream that is corrupt or whose last frame stops short. A truncated file is never a shorter corpus."""

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = path, kind
        self.raw = open(path, "rb")
        if kind == "gzip":
            self.inner = gzip.GzipFile(fileobj=self.raw, mode="rb")
        else:
            try:
                import zstandard
            except ImportError as e:
                self.raw.close()
                raise ValueError(f"{path} is zstandard-compressed; pip install zstandard (part of phi-edge[train])") \
                    from e
            self.zstd = zstandard
            self.context = zstandard.ZstdDecompressor()
            self.frame = self.context.decompressobj()
            self.in_frame = False  # bytes of a frame were fed and it has not ended
            self.out, self.at = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            return self.inner.readinto(buffer) if self.kind == "gzip" else self._zstd_into(buffer)
        except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise ValueError(f"{self.path} is truncated or corrupt ({self.kind}: {e}); copy or download it again "
                             f"(a damaged file is not read as a shorter corpus)") from None

    _CHUNK = 1 << 14  # compressed bytes fed at a time: bounds what one call decompresses

    def _zstd_into(self, buffer) -> int:
        while self.at == len(self.out):
            chunk = self.raw.read(self._CHUNK)
            if not chunk:
                if self.in_frame:
                    raise EOFError("the last frame ends before its end")
                return 0
            try:
                self.out, self.at = self._feed(chunk), 0
            except self.zstd.ZstdError as e:
                raise EOFError(str(e)) from None
        n = min(len(buffer), len(self.out) - self.at)
        buffer[:n] = self.out[self.at:self.at + n]
        self.at += n
        return n

    def _feed(self, data: bytes) -> bytes:
        out = bytearray()
        while data:
            out += self.frame.decompress(data)
            if not self.frame.eof:
                self.in_frame = True
                break
            data, self.in_frame = self.frame.unused_data, False  # the next frame starts after this one
            self.frame = self.context.decompressobj()
        return bytes(out)

    def close(self) -> None:
        if self.kind == "gzip":
            self.inner.close()
        self.raw.close()
        super().close()


def _open_text(path: Path) -> io.TextIOBase:
    """`path` as a text stream, decompressing gzip or zstandard by magic bytes."""
    magic = _magic(path)
    kind = "gzip" if magic.startswith(GZIP_MAGIC) else "zstandard" if magic == ZSTD_MAGIC else None
    if kind is not None:
        return io.TextIOWrapper(io.BufferedReader(_Checked(path, kind)), encoding="utf-8-sig", errors="replace",
                                newline="")
    return open(path, encoding="utf-8-sig", errors="replace", newline="")  # newline="": keep \r\n as is; a BOM
    # at the start (Windows editors write one) is not part of the text


def _text_of(value, where: str) -> str | None:
    """A record's text; None for a null one; anything but a string is refused, naming `where`. A lone surrogate
    (JSON may spell one, "\\ud800") becomes U+FFFD, as a lenient UTF-8 decoder shows bytes that are not text."""
    if value is None:
        return value
    if not isinstance(value, str):
        raise ValueError(f"{where} is a {type(value).__name__}, not text; pass --text-field with a string field")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return value


def _jsonl(path: Path, field: str) -> Iterator[str]:
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n} is not JSON ({e.msg}); a JSON Lines file holds one object per "
                                 f"line (pass --format text to read it as plain text)") from None
            except RecursionError:
                raise ValueError(f"{path} line {n} nests JSON too deeply to read; a record is an object whose "
                                 f"--text-field holds the text") from None
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
