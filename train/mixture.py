"""Data mixtures: which shard folders to train on, in what proportion, and a resumable sampler over them.

Mixture file (JSON; relative paths resolve against the mixture file's folder; keys starting with "_"
are comments)::

    {"format": "phi-mixture/1",
     "sources": [{"name": "synthetic", "path": "data/synthetic", "weight": 0.8},
                 {"name": "code",      "path": "data/code",      "weight": 0.2}],
     "heldout": [{"name": "code-heldout", "path": "data/code-heldout"}]}      # optional

Sampling: each training row is one window of seq_len + 1 tokens. A row's source is drawn by weight from
one PCG64 stream; inside a source, a cursor walks that source's non-overlapping windows in an order
shuffled per (seed, source, epoch), with a random start offset per epoch, and wraps into a new epoch.
The whole state is a few integers, so state_dict() is JSON and a restored sampler continues exactly.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from train.data import SHARDS_HOWTO, Source, load_source

MIXTURE_FORMAT = "phi-mixture/1"
SAMPLER_FORMAT = "phi-sampler/1"
DEFAULT_EVAL_BATCH = 8


# ---------------------------------------------------------------- mixture file


@dataclass(frozen=True)
class MixtureSource:
    name: str
    path: Path
    weight: float  # normalised to sum to 1 over the mixture by load_mixture

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"source name {self.name!r} must be a non-empty string")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"source {self.name!r} has weight {w!r}; weights must be finite numbers > 0 "
                             "(drop the source from the mixture instead of giving it weight 0)")


@dataclass(frozen=True)
class HeldoutSource:
    name: str
    path: Path

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"heldout name {self.name!r} must be a non-empty string")


@dataclass(frozen=True)
class Mixture:
    path: Path  # the mixture file itself
    sources: tuple[MixtureSource, ...]
    heldout: tuple[HeldoutSource, ...] = ()

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError(f"{self.path}: 'sources' is empty; list at least one shard folder with a weight")
        names = [s.name for s in self.sources] + [h.name for h in self.heldout]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{self.path}: source names must be unique, {dupes} appear more than once; rename them")

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(s.weight for s in self.sources)


def load_mixture(path: Path, check_paths: bool = True) -> Mixture:
    """Read and validate a mixture file; weights come back normalised to sum to 1.

    With check_paths, every source and heldout folder must exist and be non-empty.
    """
    path = Path(path)
    if path.is_dir() and (path / "source.json").is_file():
        raise ValueError(f"--data {path} is a shard folder (it has source.json); --data takes a mixture file that "
                         f"lists shard folders with weights: python -m train.data writes one (mixture.json), or "
                         f"write {{\"format\": \"{MIXTURE_FORMAT}\", \"sources\": [{{\"name\": \"{path.name}\", "
                         f"\"path\": \"{path.name}\", \"weight\": 1}}]}} beside the folder")
    if path.is_dir() and (path / "mixture.json").is_file():
        raise ValueError(f"--data {path} is a folder; pass its mixture file, --data {path / 'mixture.json'}")
    if not path.is_file():
        raise FileNotFoundError(f"mixture file {path} does not exist; write one (see train/mixtures/*.json) "
                                "or build the demo with `python -m train.data stdlib --out DIR`")
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, RecursionError) as e:
        raise ValueError(f"mixture file {path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or raw.get("format") != MIXTURE_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path}: format {found!r} is not {MIXTURE_FORMAT!r}; add \"format\": \"{MIXTURE_FORMAT}\"")
    unknown = sorted(k for k in raw if not k.startswith("_") and k not in ("format", "sources", "heldout"))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; allowed are format, sources, heldout (and _comments)")
    base = path.parent
    sources = tuple(MixtureSource(e["name"], base / e["path"], e["weight"])
                    for e in _entries(raw, "sources", path, ("name", "path", "weight")))
    heldout = tuple(HeldoutSource(e["name"], base / e["path"])
                    for e in _entries(raw, "heldout", path, ("name", "path")))
    total = sum(s.weight for s in sources)
    mixture = Mixture(path, tuple(MixtureSource(s.name, s.path, s.weight / total) for s in sources), heldout)
    if check_paths:
        for entry in (*mixture.sources, *mixture.heldout):
            _check_folder(entry.name, entry.path, path)
    return mixture


def _entries(raw: dict, key: str, path: Path, fields: tuple[str, ...]) -> list[dict]:
    entries = raw.get(key, [])
    if not isinstance(entries, list):
        raise ValueError(f"{path}: {key!r} must be a list of {{{', '.join(fields)}}} objects")
    for i, e in enumerate(entries):
        missing = [f for f in fields if not isinstance(e, dict) or f not in e]
        if missing:
            raise ValueError(f"{path}: {key}[{i}] lacks {missing}; each entry needs {list(fields)}")
        if not isinstance(e["path"], str) or not e["path"]:
            raise ValueError(f"{path}: {key}[{i}] ({e['name']!r}) path {e['path']!r} must be a non-empty string")
    return entries


def _check_folder(name: str, folder: Path, mixture_path: Path) -> None:
    if not folder.is_dir() or not any(folder.iterdir()):
        state = "does not exist" if not folder.exists() else "is empty" if folder.is_dir() else "is not a folder"
        raise FileNotFoundError(
            f"source {name!r} folder {folder} {state}; create it with `{SHARDS_HOWTO} {folder}` or fix its path "
            f"in {mixture_path} (relative paths resolve against the mixture file's folder)")


def write_mixture(path: Path, sources: Sequence[tuple[str, str, float]],
                  heldout: Sequence[tuple[str, str]] = ()) -> Path:
    """Write a mixture file atomically from (name, path, weight) and (name, path) tuples, then validate it."""
    path = Path(path)
    doc = {"format": MIXTURE_FORMAT,
           "sources": [{"name": n, "path": p, "weight": w} for n, p, w in sources]}
    if heldout:
        doc["heldout"] = [{"name": n, "path": p} for n, p in heldout]
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    load_mixture(path, check_paths=False)
    return path


def load_sources(mixture: Mixture) -> list[Source]:
    """Memory-map the training sources of a mixture, in mixture order."""
    return [load_source(s.path) for s in mixture.sources]


# ---------------------------------------------------------------- sampling


class MixtureSampler:
    """Deterministic, resumable packing of training rows (n, seq_len + 1) from weighted sources."""

    def __init__(self, mixture_sources: list[Source], weights: Sequence[float], seq_len: int, seed: int) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len={seq_len} must be >= 1")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed={seed!r} must be an integer >= 0")
        if len(mixture_sources) != len(weights) or not mixture_sources:
            raise ValueError(f"got {len(mixture_sources)} sources and {len(weights)} weights; "
                             "pass one weight per source and at least one source")
        w = np.asarray(weights, dtype=np.float64)
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError(f"weights {list(weights)} must be finite and > 0")
        self.sources = list(mixture_sources)
        self.weights = w / w.sum()
        self.seq_len, self.seed = int(seq_len), int(seed)
        self.window = self.seq_len + 1
        for src in self.sources:
            if src.num_tokens < self.window:
                raise ValueError(f"source {src.name!r} ({src.path}) has {src.num_tokens} tokens, fewer than "
                                 f"seq_len + 1 = {self.window}; add data to it, lower seq_len or drop it")
        self._cdf = np.cumsum(self.weights)
        self._cdf[-1] = 1.0
        self._num_windows = [src.num_tokens // self.window for src in self.sources]
        self._rng = np.random.Generator(np.random.PCG64([self.seed, 0]))  # source choice
        self._epoch = [0] * len(self.sources)
        self._cursor = [0] * len(self.sources)
        self._order: list[tuple[int, int, np.ndarray] | None] = [None] * len(self.sources)  # (epoch, offset, perm)
        self.draws = 0
        self.last_sources = np.empty(0, dtype=np.int64)  # source index of each row of the last batch

    @classmethod
    def from_mixture(cls, mixture: Mixture, seq_len: int, seed: int) -> MixtureSampler:
        return cls(load_sources(mixture), mixture.weights, seq_len, seed)

    def next_batch(self, n: int) -> np.ndarray:
        """(n, seq_len + 1) int64 rows; inputs = rows[:, :-1], targets = rows[:, 1:].

        Draws are row by row, so two batches of n equal one batch of 2n.
        """
        choice = np.searchsorted(self._cdf, self._rng.random(n), side="right")  # (n,)
        rows = np.empty((n, self.window), dtype=np.int64)  # (n, T + 1)
        for r, i in enumerate(choice):
            rows[r] = self._next_window(int(i))
        self.draws += n
        self.last_sources = choice.astype(np.int64)
        return rows

    def _next_window(self, i: int) -> np.ndarray:
        if self._cursor[i] == self._num_windows[i]:
            self._epoch[i] += 1
            self._cursor[i] = 0
        offset, perm = self._epoch_order(i)
        start = offset + int(perm[self._cursor[i]]) * self.window
        self._cursor[i] += 1
        return self.sources[i].read(start, self.window)

    def _epoch_order(self, i: int) -> tuple[int, np.ndarray]:
        cached = self._order[i]
        if cached is None or cached[0] != self._epoch[i]:
            rng = np.random.Generator(np.random.PCG64([self.seed, 1, i, self._epoch[i]]))
            slack = self.sources[i].num_tokens - self._num_windows[i] * self.window
            offset = int(rng.integers(0, slack + 1))  # shifts window boundaries each epoch
            cached = (self._epoch[i], offset, rng.permutation(self._num_windows[i]))
            self._order[i] = cached
        return cached[1], cached[2]

    def state_dict(self) -> dict:
        return {"format": SAMPLER_FORMAT, "seq_len": self.seq_len, "seed": self.seed,
                "weights": [float(w) for w in self.weights], "draws": self.draws,
                "rng": self._rng.bit_generator.state,
                "sources": [{"name": s.name, "num_tokens": s.num_tokens, "epoch": e, "cursor": c}
                            for s, e, c in zip(self.sources, self._epoch, self._cursor)]}

    def load_state_dict(self, state: dict) -> None:
        try:
            self._load_state(state)
        except (KeyError, TypeError) as e:
            raise ValueError(f"sampler state lacks or mangles field {e}; pass a dict from state_dict()") from e

    def _load_state(self, state: dict) -> None:
        fix = "build the sampler with the same sources, weights, seq_len and seed as the run that saved it"
        if state.get("format") != SAMPLER_FORMAT:
            raise ValueError(f"sampler state format {state.get('format')!r} is not {SAMPLER_FORMAT!r}")
        for key, mine in (("seq_len", self.seq_len), ("seed", self.seed)):
            if state[key] != mine:
                raise ValueError(f"sampler state has {key}={state[key]} but this sampler has {mine}; {fix}")
        saved = [(s["name"], s["num_tokens"]) for s in state["sources"]]
        mine = [(s.name, s.num_tokens) for s in self.sources]
        if saved != mine or not np.allclose(state["weights"], self.weights, rtol=0, atol=1e-12):
            raise ValueError(f"sampler state was saved for sources {saved} with weights {state['weights']}, "
                             f"this sampler has {mine} with {list(self.weights)}; {fix}")
        for s, n in zip(state["sources"], self._num_windows):
            if not 0 <= s["cursor"] <= n or s["epoch"] < 0:
                raise ValueError(f"sampler state for {s['name']!r} has epoch {s['epoch']}, cursor {s['cursor']} "
                                 f"outside its {n} windows; the state is damaged")
        self._rng.bit_generator.state = state["rng"]
        self._epoch = [int(s["epoch"]) for s in state["sources"]]
        self._cursor = [int(s["cursor"]) for s in state["sources"]]
        self.draws = int(state["draws"])


def heldout_batches(source: Source, seq_len: int, max_tokens: int | None = None,
                    batch_size: int = DEFAULT_EVAL_BATCH) -> Iterator[np.ndarray]:
    """Evaluation rows (n <= batch_size, seq_len + 1) int64, in stream order, always the same.

    Consecutive windows share one boundary token (stride seq_len), so the targets rows[:, 1:] tile the
    stream without overlap: every token after the first is scored exactly once. `max_tokens` caps the
    number of target tokens.
    """
    if seq_len < 1 or batch_size < 1 or (max_tokens is not None and max_tokens < 1):
        raise ValueError(f"seq_len={seq_len}, batch_size={batch_size} and max_tokens={max_tokens} must be >= 1")
    if source.num_tokens < seq_len + 1:
        raise ValueError(f"heldout source {source.name!r} ({source.path}) has {source.num_tokens} tokens, fewer "
                         f"than seq_len + 1 = {seq_len + 1}; add data or lower seq_len")
    num_windows = (source.num_tokens - 1) // seq_len
    if max_tokens is not None:
        num_windows = min(num_windows, max(1, max_tokens // seq_len))
    for first in range(0, num_windows, batch_size):
        count = min(batch_size, num_windows - first)
        yield np.stack([source.read((first + j) * seq_len, seq_len + 1) for j in range(count)])
