"""Quality gates for generated (or web) records, applied in order, each counting what it removed:

    length          fewer than min_chars or more than max_chars characters
    quality         too few letters, too many repeated lines, one word dominating (degenerate loops)
    exact           the same text after lower-casing and collapsing whitespace as an earlier record
    near-duplicate  MinHash LSH (datasketch) over word 5-gram shingles: Jaccard >= threshold with a kept record
    decontaminate   shares a word n-gram (13, as GPT-3's decontamination) with an evaluation item, or contains a
                    whole item shorter than n words
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


@dataclass(frozen=True)
class GateOptions:
    min_chars: int = 200
    max_chars: int = 20_000
    min_letter_fraction: float = 0.4  # letters / characters; code-heavy textbooks sit around 0.5-0.6
    max_repeated_line_fraction: float = 0.3  # non-blank lines that repeat an earlier line
    max_top_word_fraction: float = 0.2  # the most frequent word's share of all words (loops repeat one)
    near_duplicate_threshold: float = 0.8
    num_perm: int = 128
    shingle_words: int = 5
    contamination_ngram: int = 13

    def __post_init__(self) -> None:
        if not 0 < self.min_chars <= self.max_chars:
            raise ValueError(f"need 0 < --min-chars ({self.min_chars}) <= --max-chars ({self.max_chars})")
        if not 0 < self.near_duplicate_threshold <= 1:
            raise ValueError(f"--near-duplicate {self.near_duplicate_threshold} must be in (0, 1]")
        if self.contamination_ngram < 1:
            raise ValueError(f"--contamination-ngram {self.contamination_ngram} must be >= 1")


def quality_problem(text: str, o: GateOptions) -> str | None:
    """Why `text` fails the language-quality gate, or None."""
    letters = sum(c.isalpha() for c in text)
    if letters < o.min_letter_fraction * len(text):
        return "letters"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and (len(lines) - len(set(lines))) > o.max_repeated_line_fraction * len(lines):
        return "repeated lines"
    ws = words(text)
    if ws and Counter(ws).most_common(1)[0][1] > o.max_top_word_fraction * len(ws) and len(ws) >= 20:
        return "one word dominates"
    return None


@dataclass
class Decontaminator:
    """Word n-grams of evaluation items; short items are matched whole."""

    n: int
    grams: set = field(default_factory=set)
    short: list = field(default_factory=list)  # normalized items of fewer than n words
    items: int = 0

    def add(self, text: str) -> None:
        ws = words(text)
        if not ws:
            return
        self.items += 1
        if len(ws) < self.n:
            self.short.append(" ".join(ws))
            return
        self.grams.update(hash(tuple(ws[i:i + self.n])) for i in range(len(ws) - self.n + 1))

    def contaminated(self, text: str) -> bool:
        ws = words(text)
        if any(hash(tuple(ws[i:i + self.n])) in self.grams for i in range(len(ws) - self.n + 1)):
            return True
        if self.short:
            joined = f" {' '.join(ws)} "
            return any(f" {item} " in joined for item in self.short)
        return False


class QualityGates:
    """Streams records through the gates; `counts` says how many each removed and how many were kept."""

    GATES = ("length", "quality", "exact", "near-duplicate", "decontaminate")

    def __init__(self, options: GateOptions = GateOptions(), evaluation: Iterable[str] = ()):
        from datasketch import MinHashLSH

        self.o = options
        self.seen: set[str] = set()
        self.lsh = MinHashLSH(threshold=options.near_duplicate_threshold, num_perm=options.num_perm)
        self.decontaminator = Decontaminator(options.contamination_ngram)
        for item in evaluation:
            self.decontaminator.add(item)
        self.counts = Counter({gate: 0 for gate in (*self.GATES, "kept")})

    def _minhash(self, text: str):
        from datasketch import MinHash

        ws = words(text)
        k = self.o.shingle_words
        shingles = {" ".join(ws[i:i + k]) for i in range(max(1, len(ws) - k + 1))}
        m = MinHash(num_perm=self.o.num_perm)
        m.update_batch([s.encode() for s in shingles])
        return m

    def check(self, text: str) -> str | None:
        """The gate `text` fails (and is counted under), or None when it is kept (and remembered)."""
        o = self.o
        if not o.min_chars <= len(text) <= o.max_chars:
            return self._drop("length")
        if quality_problem(text, o):
            return self._drop("quality")
        key = hashlib.sha256(normalize(text).encode()).hexdigest()
        if key in self.seen:
            return self._drop("exact")
        m = self._minhash(text)
        if self.lsh.query(m):
            return self._drop("near-duplicate")
        if self.decontaminator.contaminated(text):
            return self._drop("decontaminate")
        self.seen.add(key)
        self.lsh.insert(key, m)
        self.counts["kept"] += 1
        return None

    def _drop(self, gate: str) -> str:
        self.counts[gate] += 1
        return gate
