"""Training data: byte-level BPE tokenizer, token shards on disk, and the stdlib demo corpus.

A *source* is a folder of raw token shards plus its description::

    DIR/
      source.json        {"format": "phi-shards/1", "dtype", "num_tokens", "num_documents",
                          "shards": [{"file", "num_tokens"}], "eos_id", "vocab_size", "tokenizer_sha256"}
      shard_00000.bin    (num_tokens,) uint16 or uint32, raw little-endian, np.memmap-able
      shard_00001.bin    ...

The token stream is the concatenation of the shards: doc_0 EOS doc_1 EOS ... (EOS = ``<|endoftext|>``,
id 0, which is also BOS). Folders are written into a temporary sibling and renamed at the end, so a
folder either holds a complete source or does not exist.

CLI::

    python -m train.data tokenizer --input corpus/ --glob "*.py" --vocab-size 51200 --out tokenizer.json
    python -m train.data shards --input corpus/ --glob "*.py" --tokenizer tokenizer.json --out data/code
    python -m train.data shards --input web.jsonl.zst books.parquet --text-field text --tokenizer tokenizer.json \
        --out data/web                                      # one document per record (train/records.py)
    python -m train.data stdlib --out data/stdlib            # demo corpus from Python's own stdlib
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import os
import shutil
import sys
import sysconfig
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from runtime import files as atomic  # "files" names the input lists here
from train.records import DEFAULT_TEXT_FIELD, FORMATS, RecordOptions, hf_dataset_files, iter_documents

SHARDS_FORMAT = "phi-shards/1"
EOS_TOKEN = "<|endoftext|>"  # id 0; both BOS and EOS, as in the GPT-2 / CodeGen tokenizer phi uses
EOS_ID = 0
MIN_VOCAB_SIZE = 257  # 256 byte symbols + <|endoftext|>
DEFAULT_SHARD_TOKENS = 2**24
DEFAULT_GLOB = "*"
DEFAULT_STDLIB_VOCAB = 4096
DEFAULT_HELDOUT_FRACTION = 0.05
DEFAULT_SEED = 0
ENCODE_BATCH_DOCS = 256  # documents encoded together (tokenizers' encode_batch uses every core)
ENCODE_BATCH_CHARS = 1 << 22  # and at most about this many characters: bounds the encodings held at once
PIECE_CHARS = 1 << 18  # a longer document is encoded in pieces of about this size (memory stays bounded per record)
MAX_VOCAB_SIZE = 1 << 20  # larger than any phi vocabulary (Phi-4-mini: 200,064); the BPE trainer allocates for it
EXCLUDED_STDLIB_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
SHARDS_HOWTO = "python -m train.data shards --input FILES_OR_DIRS --tokenizer tokenizer.json --out"


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(files: list[Path], vocab_size: int, out: Path, records: RecordOptions = RecordOptions()) -> Path:
    """Train a GPT-2 style byte-level BPE on the documents of `files` and write tokenizer.json atomically."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size} is out of range; pass --vocab-size {MIN_VOCAB_SIZE} or more (256 "
                         f"bytes + {EOS_TOKEN}) and at most {MAX_VOCAB_SIZE}")
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no input files for the tokenizer; pass --input with files or folders that contain text")
    nonempty = [f for f in files if f.stat().st_size > 0]
    if not nonempty:
        raise ValueError(f"empty corpus: all {len(files)} input files are empty; pass files that contain text")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],  # first special token gets id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    documents = (doc for f in nonempty for doc in iter_documents(f, records))
    tokenizer.train_from_iterator(documents, trainer=trainer)
    assert tokenizer.token_to_id(EOS_TOKEN) == EOS_ID, "special token must be id 0"

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    tokenizer.save(str(tmp))
    os.replace(tmp, out)
    return out


def _load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path} does not exist; train one with "
                                f"`python -m train.data tokenizer --input FILES --vocab-size N --out {path}`")
    tokenizer = Tokenizer.from_file(str(path))
    if tokenizer.token_to_id(EOS_TOKEN) is None:
        raise ValueError(f"tokenizer {path} has no {EOS_TOKEN} token; train it with `python -m train.data tokenizer`")
    return tokenizer


# ---------------------------------------------------------------- sources (shard folders)


@dataclass(frozen=True)
class ShardInfo:
    file: str
    num_tokens: int


@dataclass(frozen=True)
class SourceInfo:
    """The contents of source.json, plus the folder it was read from."""

    path: Path
    dtype: str
    num_tokens: int
    num_documents: int
    shards: tuple[ShardInfo, ...]
    eos_id: int
    vocab_size: int
    tokenizer_sha256: str

    def __post_init__(self) -> None:
        where = self.path / "source.json"
        if self.dtype not in ("uint16", "uint32"):
            raise ValueError(f"{where}: dtype={self.dtype!r} must be 'uint16' or 'uint32'; rewrite it with {SHARDS_HOWTO}")
        if self.num_tokens <= 0 or not self.shards:
            raise ValueError(f"{where}: num_tokens={self.num_tokens} with {len(self.shards)} shards; a source needs "
                             f"tokens, rewrite it with {SHARDS_HOWTO}")
        if sum(s.num_tokens for s in self.shards) != self.num_tokens:
            raise ValueError(f"{where}: shard token counts do not add up to num_tokens={self.num_tokens}; "
                             f"the folder is damaged, rewrite it with {SHARDS_HOWTO}")
        if not 0 <= self.eos_id < self.vocab_size:
            raise ValueError(f"{where}: eos_id={self.eos_id} is outside vocab_size={self.vocab_size}")

    def to_json(self) -> dict:
        return {"format": SHARDS_FORMAT, "dtype": self.dtype, "num_tokens": self.num_tokens,
                "num_documents": self.num_documents,
                "shards": [{"file": s.file, "num_tokens": s.num_tokens} for s in self.shards],
                "eos_id": self.eos_id, "vocab_size": self.vocab_size, "tokenizer_sha256": self.tokenizer_sha256}

    @classmethod
    def from_json(cls, path: Path, meta: dict) -> SourceInfo:
        where = path / "source.json"
        if not isinstance(meta, dict) or meta.get("format") != SHARDS_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"{where}: format {found!r} is not {SHARDS_FORMAT!r}; rewrite it with {SHARDS_HOWTO} {path}")
        try:
            return cls(path=path, dtype=meta["dtype"], num_tokens=int(meta["num_tokens"]),
                       num_documents=int(meta["num_documents"]),
                       shards=tuple(ShardInfo(str(s["file"]), int(s["num_tokens"])) for s in meta["shards"]),
                       eos_id=int(meta["eos_id"]), vocab_size=int(meta["vocab_size"]),
                       tokenizer_sha256=str(meta["tokenizer_sha256"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{where}: missing or malformed field {e}; rewrite it with {SHARDS_HOWTO} {path}") from e


@dataclass(frozen=True, eq=False)
class Source:
    """A loaded shard folder: memory-mapped shards read as one token stream."""

    info: SourceInfo
    shards: tuple[np.memmap, ...]
    offsets: tuple[int, ...] = field(init=False, repr=False)  # stream position where each shard starts

    def __post_init__(self) -> None:
        starts = np.cumsum([0] + [s.num_tokens for s in self.info.shards[:-1]])
        object.__setattr__(self, "offsets", tuple(int(x) for x in starts))

    @property
    def path(self) -> Path:
        return self.info.path

    @property
    def name(self) -> str:
        return self.info.path.name

    @property
    def num_tokens(self) -> int:
        return self.info.num_tokens

    def __len__(self) -> int:
        return self.info.num_tokens

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the stream as int64, crossing shard boundaries."""
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(f"window [{start}, {start + length}) is outside {self.path} ({self.num_tokens} tokens)")
        offsets = self.offsets
        out = np.empty(length, dtype=np.int64)
        filled = 0
        i = bisect_right(offsets, start) - 1
        while filled < length:
            lo = start + filled - offsets[i]
            piece = self.shards[i][lo:lo + length - filled]
            out[filled:filled + len(piece)] = piece
            filled += len(piece)
            i += 1
        return out


def load_source(path: Path) -> Source:
    """Validate DIR/source.json and memory-map its shards (read-only)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} does not exist; create it with {SHARDS_HOWTO} {path}")
    meta_path = path / "source.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing, so {path} is not a shard folder; "
                                f"create it with {SHARDS_HOWTO} {path}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e}); rewrite the folder with {SHARDS_HOWTO} {path}") from e
    info = SourceInfo.from_json(path, meta)
    itemsize = np.dtype(info.dtype).itemsize
    maps = []
    for shard in info.shards:
        file = path / shard.file
        if not file.is_file() or file.stat().st_size != shard.num_tokens * itemsize:
            size = file.stat().st_size if file.is_file() else "missing"
            raise ValueError(f"shard {file} should hold {shard.num_tokens} {info.dtype} tokens "
                             f"({shard.num_tokens * itemsize} bytes) but is {size}; rewrite with {SHARDS_HOWTO} {path}")
        maps.append(np.memmap(file, dtype=info.dtype, mode="r", shape=(shard.num_tokens,)))
    return Source(info=info, shards=tuple(maps))


def write_source(out_dir: Path, documents: Iterable[np.ndarray], *, vocab_size: int, eos_id: int = EOS_ID,
                 tokenizer_sha256: str = "", shard_tokens: int = DEFAULT_SHARD_TOKENS,
                 force: bool = False) -> SourceInfo:
    """Write token arrays (one per document, each already ending in EOS) as a shard folder, atomically."""
    if shard_tokens <= 0:
        raise ValueError(f"shard_tokens={shard_tokens} must be positive")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force, marker="source.json")
    dtype = np.dtype(np.uint16 if vocab_size < 2**16 else np.uint32)
    tmp = _tmp_sibling(out_dir)
    try:
        writer = _ShardWriter(tmp, dtype, shard_tokens)
        num_documents = 0
        for doc in documents:
            doc = np.asarray(doc)
            if doc.size == 0:
                continue
            if doc.min() < 0 or doc.max() >= vocab_size:
                raise ValueError(f"token ids in [{doc.min()}, {doc.max()}] do not fit vocab_size={vocab_size}")
            writer.write(doc.astype(dtype, copy=False))
            num_documents += 1
        shards = writer.close()
        if not shards:
            raise ValueError(f"empty corpus: no tokens to write to {out_dir}; pass files that contain text")
        info = SourceInfo(path=out_dir, dtype=dtype.name, num_tokens=sum(s.num_tokens for s in shards),
                          num_documents=num_documents, shards=tuple(shards), eos_id=eos_id,
                          vocab_size=vocab_size, tokenizer_sha256=tokenizer_sha256)
        (tmp / "source.json").write_text(json.dumps(info.to_json(), indent=1) + "\n", encoding="utf-8")
        atomic.replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


class _ShardWriter:
    """Streams tokens into shard_00000.bin, shard_00001.bin, ... of at most `shard_tokens` each."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        self.shards: list[ShardInfo] = []
        self.file = None
        self.count = 0

    def write(self, tokens: np.ndarray) -> None:
        while tokens.size:
            if self.file is None:
                self.file = open(self.folder / f"shard_{len(self.shards):05d}.bin", "wb")
                self.count = 0
            piece = tokens[:self.shard_tokens - self.count]
            piece.tofile(self.file)
            self.count += piece.size
            tokens = tokens[piece.size:]
            if self.count == self.shard_tokens:
                self._finish()

    def close(self) -> list[ShardInfo]:
        if self.file is not None:
            self._finish()
        return self.shards

    def _finish(self) -> None:
        self.file.close()
        self.shards.append(ShardInfo(Path(self.file.name).name, self.count))
        self.file = None


def tokenize_to_shards(files: list[Path], tokenizer_path: Path, out_dir: Path,
                       shard_tokens: int = DEFAULT_SHARD_TOKENS, force: bool = False,
                       records: RecordOptions = RecordOptions(), progress: bool = True) -> SourceInfo:
    """Encode each document (a text file, a JSON Lines record, a Parquet row: train/records.py) followed by EOS
    and write a shard folder; documents are streamed and encoded in batches, so memory stays bounded."""
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no input files to tokenize; pass --input with files or folders that contain text")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force, marker="source.json")  # fail before the slow part
    tokenizer = _load_tokenizer(tokenizer_path)
    tokenizer.encode_special_tokens = True  # a literal "<|endoftext|>" inside a file is text, not EOS
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    sha = hashlib.sha256(Path(tokenizer_path).read_bytes()).hexdigest()

    def batches() -> Iterator[list[str]]:
        """Documents in batches of at most ENCODE_BATCH_DOCS and about ENCODE_BATCH_CHARS; a document longer than
        PIECE_CHARS is a batch of its own."""
        batch: list[str] = []
        chars = 0
        with tqdm(total=len(files), desc=f"tokenizing -> {out_dir.name}", unit="file", file=sys.stderr,
                  disable=not progress) as bar:
            for f in files:
                for doc in iter_documents(f, records):
                    if len(doc) > PIECE_CHARS:
                        if batch:
                            yield batch
                        yield [doc]
                        batch, chars = [], 0
                        continue
                    batch.append(doc)
                    chars += len(doc)
                    if len(batch) == ENCODE_BATCH_DOCS or chars >= ENCODE_BATCH_CHARS:
                        yield batch
                        batch, chars = [], 0
                bar.update(1)
        if batch:
            yield batch

    def documents() -> Iterator[np.ndarray]:
        for batch in batches():
            if len(batch) == 1 and len(batch[0]) > PIECE_CHARS:
                yield np.concatenate([*encode_long(tokenizer, batch[0]), np.array([eos_id], np.int64)])
                continue
            for enc in tokenizer.encode_batch(batch, add_special_tokens=False):
                yield np.array(enc.ids + [eos_id], dtype=np.int64)

    try:
        return write_source(out_dir, documents(), vocab_size=tokenizer.get_vocab_size(), eos_id=eos_id,
                            tokenizer_sha256=sha, shard_tokens=shard_tokens, force=force)
    except ValueError as e:
        if str(e).startswith("empty corpus"):
            raise ValueError(f"empty corpus: the {len(files)} input files hold no text; pass files that contain text "
                             f"(for JSON Lines or Parquet, check --text-field)") from e
        raise


def pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    """`text` cut into pieces of at most about `size` characters, each cut just before a space that sits between
    two non-space characters: a boundary of the GPT-2 / phi pre-tokenizer's words (" word" starts a word), so the
    byte-level BPE tokens of the pieces equal those of the whole text. A stretch with no such space (a long line of
    CJK text, base64) is cut at `size`."""
    out, start = [], 0
    while len(text) - start > size:
        end = start + size
        cut = end
        while cut > start + size // 2:
            cut = text.rfind(" ", start + size // 2, cut)
            if cut < 0:
                cut = end
                break
            if not text[cut - 1].isspace() and not text[cut + 1].isspace():
                break
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def encode_long(tokenizer, text: str) -> list[np.ndarray]:
    """The ids of a long document, encoded piece by piece (ENCODE_BATCH_CHARS at a time), so the encodings held at
    once stay bounded whatever the record's size (a 100 MB record would need about 175x its size in one call)."""
    parts, group, chars = [], [], 0
    for piece in pieces(text) + [""]:
        if piece:
            group.append(piece)
            chars += len(piece)
        if group and (not piece or chars >= ENCODE_BATCH_CHARS):
            parts += [np.array(e.ids, np.int64) for e in tokenizer.encode_batch(group, add_special_tokens=False)]
            group, chars = [], 0
    return parts


# ---------------------------------------------------------------- output folders


def _check_out_dir(out_dir: Path, force: bool, marker: str) -> None:
    """Refuse a non-empty `out_dir` unless `force`; even then only replace a folder this module wrote."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {out_dir} exists and is a file; choose a folder path with --out")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not force:
        raise ValueError(f"output folder {out_dir} is not empty; pass --force to replace it or choose another folder")
    if not (out_dir / marker).exists():
        raise ValueError(f"refusing to replace {out_dir} with --force: it has no {marker}, so python -m train.data "
                         "did not write it; remove it yourself or choose another folder")


def _tmp_sibling(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return atomic.make_tmp_dir(out_dir)


# ---------------------------------------------------------------- corpus selection


def split_modules(files: list[Path], heldout_fraction: float, seed: int,
                  root: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Split whole files into (train, heldout) by sha256 of (seed, path relative to `root`).

    Each file's side depends only on its own path and the seed, so adding or removing files never moves
    another file across the split. Input order is kept.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction={heldout_fraction} must be in [0, 1); pass e.g. --heldout-fraction 0.05")
    train, heldout = [], []
    for f in files:
        key = Path(f).relative_to(root).as_posix() if root is not None else Path(f).as_posix()
        digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
        (heldout if int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction else train).append(Path(f))
    return train, heldout


def python_stdlib_files() -> list[Path]:
    """The running interpreter's stdlib .py files, without site-packages and test folders, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in EXCLUDED_STDLIB_DIRS]
        found.extend(Path(folder) / n for n in names if n.endswith(".py"))
    return sorted(found)


def expand_inputs(paths: list[Path], glob: str = DEFAULT_GLOB) -> list[Path]:
    """Files as given plus files under folders matching `glob` (recursive, hidden names skipped)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"input path {p} does not exist; check --input")
        if p.is_dir() and hf_dataset_files(p) is not None:  # a datasets save_to_disk folder: its .arrow files
            files.extend(hf_dataset_files(p))
        elif p.is_dir():
            files.extend(f for f in sorted(p.rglob(glob)) if f.is_file()
                         and not any(part.startswith(".") for part in f.relative_to(p).parts))
        else:
            files.append(p)
    files = list(dict.fromkeys(files))
    if not files:
        raise ValueError(f"no input files: --input {' '.join(map(str, paths))} matched nothing with --glob {glob!r}; "
                         "check the folders or the pattern")
    return files


def build_stdlib_corpus(out: Path, vocab_size: int = DEFAULT_STDLIB_VOCAB,
                        heldout_fraction: float = DEFAULT_HELDOUT_FRACTION, seed: int = DEFAULT_SEED,
                        force: bool = False, files: list[Path] | None = None, root: Path | None = None) -> dict:
    """Demo corpus: split stdlib modules, train the tokenizer on the train split, shard both splits.

    Writes OUT/tokenizer.json, OUT/train/, OUT/heldout/, OUT/mixture.json, OUT/split.json. `files` and
    `root` default to python_stdlib_files() and the stdlib folder (tests pass a small subset).
    """
    from train.mixture import write_mixture  # mixture imports this module; import here to avoid a cycle

    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size} is too small; pass --vocab-size {MIN_VOCAB_SIZE} or more")
    out = Path(out)
    _check_out_dir(out, force, marker="split.json")
    root = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    files = python_stdlib_files() if files is None else [Path(f) for f in files]
    train_files, heldout_files = split_modules(files, heldout_fraction, seed, root=root)
    if heldout_fraction > 0 and not heldout_files:
        raise ValueError(f"no module fell in the held-out split of {len(files)} files; raise --heldout-fraction")
    if not train_files:
        raise ValueError(f"no module left for training out of {len(files)} files; lower --heldout-fraction")

    tmp = _tmp_sibling(out)
    try:
        tokenizer = train_tokenizer(train_files, vocab_size, tmp / "tokenizer.json")
        train_info = tokenize_to_shards(train_files, tokenizer, tmp / "train")
        heldout = []
        summary = {"train_files": len(train_files), "train_tokens": train_info.num_tokens,
                   "heldout_files": len(heldout_files), "heldout_tokens": 0}
        if heldout_files:
            summary["heldout_tokens"] = tokenize_to_shards(heldout_files, tokenizer, tmp / "heldout").num_tokens
            heldout = [("stdlib-heldout", "heldout")]
        write_mixture(tmp / "mixture.json", [("stdlib-train", "train", 1.0)], heldout)
        split = {"python": sys.version.split()[0], "stdlib": root.as_posix(), "seed": seed,
                 "heldout_fraction": heldout_fraction, "num_train_files": len(train_files),
                 "heldout": [f.relative_to(root).as_posix() for f in heldout_files]}
        (tmp / "split.json").write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")
        atomic.replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary["vocab_size"] = _load_tokenizer(out / "tokenizer.json").get_vocab_size()
    return summary


# ---------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like our own errors, instead of usage + message
        self.exit(2, f"error: {message}; see `python -m train.data --help`\n")


def _cmd_tokenizer(args: argparse.Namespace) -> None:
    files = expand_inputs(args.input, args.glob)
    out = train_tokenizer(files, args.vocab_size, args.out, RecordOptions(args.format, args.text_field))
    print(f"wrote {out} (trained on {len(files)} files)")


def _cmd_shards(args: argparse.Namespace) -> None:
    files = expand_inputs(args.input, args.glob)
    records = RecordOptions(args.format, args.text_field)
    if args.jobs == 1 and args.slices is None and args.part is None:
        info = tokenize_to_shards(files, args.tokenizer, args.out, shard_tokens=args.shard_tokens, force=args.force,
                                  records=records)
    else:
        from train.parallel import parse_part, tokenize_parallel

        part = parse_part(args.part) if args.part else (0, 1)
        info = tokenize_parallel(files, args.tokenizer, args.out, args.jobs, args.slices, part, args.shard_tokens,
                                 args.force, records)
        if info is None:
            return
    print(f"wrote {info.path}: {info.num_tokens} tokens, {info.num_documents} documents, {len(info.shards)} shards")


def _cmd_merge(args: argparse.Namespace) -> None:
    from train.parallel import merge_sources

    info = merge_sources(args.input, args.out, args.force)
    print(f"wrote {info.path}: {info.num_tokens} tokens, {info.num_documents} documents, {len(info.shards)} shards "
          f"from {len(args.input)} folders")


def _cmd_stdlib(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    summary = build_stdlib_corpus(args.out, args.vocab_size, args.heldout_fraction, args.seed, args.force)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps({"out": str(args.out), **summary}))


def _add_record_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="how a file holds documents (default: %(default)s: Parquet by its magic bytes, JSON Lines "
                        "by a .jsonl/.json name, optionally .gz/.zst; anything else is one text document)")
    p.add_argument("--text-field", default=DEFAULT_TEXT_FIELD,
                   help="the JSON field or Parquet column with each record's text (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m train.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    p.add_argument("--input", type=Path, nargs="+", required=True, help="files or folders")
    p.add_argument("--glob", default=DEFAULT_GLOB, help="file pattern inside folders (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="tokenizer.json to write")
    _add_record_options(p)
    p.set_defaults(run=_cmd_tokenizer)

    p = sub.add_parser("shards", help="tokenize files into a shard folder")
    p.add_argument("--input", type=Path, nargs="+", required=True, help="files or folders")
    p.add_argument("--glob", default=DEFAULT_GLOB, help="file pattern inside folders (default: %(default)s)")
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="shard folder to write")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    p.add_argument("--force", action="store_true", help="replace an existing shard folder")
    p.add_argument("--jobs", type=int, default=1, help="tokenizing processes (default: %(default)s); with more "
                   "than 1, slices are kept in OUT.parts and a rerun resumes (train/parallel.py)")
    p.add_argument("--slices", type=int, default=None, help="slices to cut the files into (default: 8 per job)")
    p.add_argument("--part", default=None, help="K/M: this machine does slices K, K+M, ... (machines 0..M-1)")
    _add_record_options(p)
    p.set_defaults(run=_cmd_shards)

    p = sub.add_parser("merge", help="unite shard folders made with one tokenizer into one source")
    p.add_argument("--input", type=Path, nargs="+", required=True, help="shard folders, in order")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--force", action="store_true", help="replace an existing shard folder")
    p.set_defaults(run=_cmd_merge)

    p = sub.add_parser("stdlib", help="build the demo corpus from this Python's standard library")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--vocab-size", type=int, default=DEFAULT_STDLIB_VOCAB, help="(default: %(default)s)")
    p.add_argument("--heldout-fraction", type=float, default=DEFAULT_HELDOUT_FRACTION, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="(default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing corpus folder")
    p.set_defaults(run=_cmd_stdlib)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        try:
            with atomic.sigterm_as_interrupt():  # SIGTERM cleans up the temporary folders like Ctrl-C
                args.run(args)
        except (ValueError, OSError) as e:  # user errors: one line, no traceback
            if atomic.terminated:  # SIGTERM's interrupt raised inside a C extension can surface as another error
                raise KeyboardInterrupt from e
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        parts = getattr(args, "jobs", 1) > 1 or getattr(args, "part", None) or getattr(args, "slices", None)
        print(f"interrupted: finished slices are kept in {args.out}.parts; run the same command again to go on"
              if parts and args.command == "shards" else "interrupted: nothing was written", file=sys.stderr)
        return 128 + signal.SIGTERM if atomic.terminated else 130  # 143 on SIGTERM, as export and train
    return 0


if __name__ == "__main__":
    sys.exit(main())
