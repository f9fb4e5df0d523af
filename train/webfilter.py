"""Filtered web data as phi-1 built it: an educational-value classifier over a language model's embeddings.

    python -m train.webfilter fit --labelled sample.jsonl --checkpoint train/demo --out classifier.json
    python -m train.webfilter score --classifier classifier.json --input web/*.jsonl.zst --out web-scored.jsonl \\
        --kept web-kept.jsonl --threshold 0.5

fit: each labelled record (`--text-field`, and `--label-field` holding 1/0 or true/false: educational or not, as
phi-1's annotators marked a sample) is embedded with a phi checkpoint (the mean of its final hidden states over the
first `--max-tokens` tokens), and scikit-learn's LogisticRegression is trained on them, with its 5-fold
cross-validated accuracy reported. The classifier is saved as JSON (coefficients, intercept, the checkpoint's
hash): nothing is pickled, so a classifier file is safe to share.

score: streams records (train/records.py formats), writes each with its score (the probability of
"educational"), and with --kept the records at or above --threshold as JSON Lines for `train.data shards`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime import files as atomic
from runtime.manifest import sha256
from train.records import RecordOptions, detect_format, iter_documents

FORMAT = "phi-webfilter/1"
DEFAULT_MAX_TOKENS = 256


class Embedder:
    """Mean-pooled final hidden states of a phi checkpoint (train.model), one document at a time."""

    def __init__(self, checkpoint: Path, max_tokens: int = DEFAULT_MAX_TOKENS):
        import torch
        from tokenizers import Tokenizer

        from train.checkpoint import load_pretrained, tokenizer_file

        self.torch = torch
        self.checkpoint = Path(checkpoint)
        self.model = load_pretrained(self.checkpoint).eval()
        tok = tokenizer_file(self.checkpoint)
        if tok is None:
            raise FileNotFoundError(f"{checkpoint} has no tokenizer.json; the embeddings need the checkpoint's own")
        self.tokenizer = Tokenizer.from_file(str(tok))
        self.max_tokens = max_tokens
        weights = sorted(self.checkpoint.glob("*.safetensors"))  # hashed in chunks: shards can be gigabytes
        self.sha256 = hashlib.sha256("".join(sha256(w) for w in weights).encode()).hexdigest()

    def __call__(self, text: str) -> np.ndarray:
        ids = self.tokenizer.encode(text).ids[:self.max_tokens] or [0]
        with self.torch.no_grad():
            hidden = self.model.model(self.torch.tensor([ids]))  # (1, T, hidden)
        return hidden[0].mean(0).float().numpy()


def _label(value, where: str) -> int:
    if isinstance(value, bool) or value in (0, 1):
        return int(value)
    raise ValueError(f"{where}: label {value!r} is not 1/0 or true/false; mark each record educational or not")


def read_labelled(path: Path, text_field: str, label_field: str) -> tuple[list[str], np.ndarray]:
    if detect_format(path) != "jsonl":
        raise ValueError(f"{path}: the labelled sample must be JSON Lines (.jsonl) with {text_field!r} and "
                         f"{label_field!r} fields")
    texts, labels = [], []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                raise ValueError(f"{path} line {n} is not a JSON object; the labelled sample holds one record per "
                                 f"line") from None
            if not isinstance(record, dict) or text_field not in record or label_field not in record:
                raise ValueError(f"{path} line {n} lacks {text_field!r} or {label_field!r}; pass --text-field and "
                                 f"--label-field")
            if not isinstance(record[text_field], str):
                raise ValueError(f"{path} line {n}: {text_field!r} is a {type(record[text_field]).__name__}, not "
                                 f"text; pass --text-field with a string field")
            texts.append(record[text_field])
            labels.append(_label(record[label_field], f"{path} line {n}"))
    y = np.array(labels)
    if len(set(labels)) < 2 or min(np.bincount(y)) < 5:
        raise ValueError(f"{path} needs at least 5 records of each label to train on (it has {np.bincount(y, minlength=2).tolist()})")
    return texts, y


def fit(labelled: Path, checkpoint: Path, out: Path, text_field: str = "text", label_field: str = "label",
        max_tokens: int = DEFAULT_MAX_TOKENS) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    check_outputs([Path(out)], [Path(labelled)])
    texts, y = read_labelled(labelled, text_field, label_field)
    embed = Embedder(checkpoint, max_tokens)
    x = np.stack([embed(t) for t in tqdm(texts, desc="embedding", unit="doc", file=sys.stderr)])
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    classifier = LogisticRegression(max_iter=2000)
    folds = min(5, int(min(np.bincount(y))))
    cv = cross_val_score(classifier, z, y, cv=folds)
    classifier.fit(z, y)
    model = {"format": FORMAT, "checkpoint": str(checkpoint), "checkpoint_sha256": embed.sha256,
             "max_tokens": max_tokens, "mean": mean.tolist(), "std": std.tolist(),
             "coef": classifier.coef_[0].tolist(), "intercept": float(classifier.intercept_[0]),
             "trained_on": len(y), "positives": int(y.sum()), "cv_accuracy": float(cv.mean()), "cv_folds": folds}
    atomic.write_text(Path(out), json.dumps(model) + "\n")
    return {k: v for k, v in model.items() if k not in ("mean", "std", "coef")}


def read_classifier(path: Path) -> dict:
    """A classifier file, checked field by field before any checkpoint is loaded."""
    try:
        model = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (ValueError, RecursionError):
        raise ValueError(f"{path} is not JSON; pass a classifier written by python -m train.webfilter fit") from None
    if not isinstance(model, dict) or model.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} classifier; make one with python -m train.webfilter fit")

    def numbers(key: str) -> np.ndarray:
        value = model.get(key)
        if not isinstance(value, list) or not value or not all(_finite(x) for x in value):
            raise ValueError(f"{path}: field {key!r} must be a list of finite numbers; the classifier is damaged, fit "
                             f"it again")
        return np.array(value, np.float64)

    mean, std, coef = numbers("mean"), numbers("std"), numbers("coef")
    if not len(mean) == len(std) == len(coef) or not (std > 0).all():
        raise ValueError(f"{path}: 'mean', 'std' and 'coef' must have one length and std be > 0; fit it again")
    if not _finite(model.get("intercept")):
        raise ValueError(f"{path}: field 'intercept' must be a finite number; fit the classifier again")
    tokens = model.get("max_tokens")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"{path}: field 'max_tokens' must be a positive integer; fit the classifier again")
    for key in ("checkpoint", "checkpoint_sha256"):
        if not isinstance(model.get(key), str):
            raise ValueError(f"{path}: field {key!r} must be a string; fit the classifier again")
    return {**model, "mean": mean, "std": std, "coef": coef, "intercept": float(model["intercept"])}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x) without overflow for any finite or infinite x."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)  # x < 0: no overflow
    return z / (1.0 + z)


class Classifier:
    def __init__(self, path: Path, checkpoint: Path | None = None):
        model = read_classifier(path)
        self.embed = Embedder(Path(checkpoint or model["checkpoint"]), model["max_tokens"])
        if self.embed.sha256 != model["checkpoint_sha256"]:
            raise ValueError(f"{self.embed.checkpoint} is not the checkpoint {path} was trained with (its weights "
                             f"differ); pass --checkpoint with that one")
        if len(model["coef"]) != self.embed.model.config.hidden_size:
            raise ValueError(f"{path} has {len(model['coef'])} coefficients but the checkpoint's embeddings have "
                             f"{self.embed.model.config.hidden_size} values; fit the classifier again")
        self.mean, self.std, self.coef, self.intercept = model["mean"], model["std"], model["coef"], model["intercept"]

    def score(self, text: str) -> float:
        z = (self.embed(text) - self.mean) / self.std
        with np.errstate(over="ignore", invalid="ignore"):
            logit = float(z @ self.coef) + self.intercept
        if math.isnan(logit):
            raise ValueError("the classifier gives no number for a record (its coefficients overflow float64); fit it "
                             "again")
        return sigmoid(logit)


def score(classifier: Path, inputs: list[Path], out: Path, kept: Path | None = None, threshold: float = 0.5,
          records: RecordOptions = RecordOptions(), checkpoint: Path | None = None) -> dict:
    """Writes every record with its score to `out` and, with `kept`, those at or above `threshold`; atomically.
    Neither output may be an input or the other output (nothing of the user's is overwritten)."""
    targets = [Path(out)] + ([Path(kept)] if kept else [])
    check_outputs(targets, [*inputs, Path(classifier)])
    if not (0 <= threshold <= 1):
        raise ValueError(f"--threshold {threshold} is not a probability; pass a number from 0 to 1")
    model = Classifier(classifier, checkpoint)
    counts = {"scored": 0, "kept": 0, "threshold": threshold}
    tmps = [t.with_name(f"{t.name}.tmp") for t in targets]
    try:
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(open(t, "w", encoding="utf-8")) for t in tmps]
            for path in inputs:
                for text in tqdm(iter_documents(path, records), desc=f"scoring {path.name}", unit="doc",
                                 file=sys.stderr):
                    s = model.score(text)
                    line = json.dumps({"score": round(s, 6), "text": text}, ensure_ascii=False) + "\n"
                    files[0].write(line)
                    counts["scored"] += 1
                    if s >= threshold:
                        counts["kept"] += 1
                        for f in files[1:]:
                            f.write(line)
        for tmp, target in zip(tmps, targets):
            tmp.replace(target)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)  # a failed run leaves nothing half-written
    return counts


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)  # hard links and symlinks too
    return a.resolve() == b.resolve()


def check_outputs(outputs: list[Path], inputs: list[Path]) -> None:
    """Refuses an output that is one of the inputs or another output, before anything is read or written."""
    for i, target in enumerate(outputs):
        if target.exists() and target.is_dir():
            raise ValueError(f"output {target} is a folder; pass a file path")
        for source in inputs:
            if _same(target, source):
                raise ValueError(f"output {target} is the input {source}; writing it would destroy the input, so "
                                 f"choose another output path")
        for other in outputs[i + 1:]:
            if _same(target, other):
                raise ValueError(f"--out and --kept are both {target}; choose two different paths")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.webfilter", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="train the classifier on a labelled sample")
    f.add_argument("--labelled", type=Path, required=True)
    f.add_argument("--checkpoint", type=Path, required=True, help="the phi checkpoint whose embeddings are used")
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--text-field", default="text")
    f.add_argument("--label-field", default="label")
    f.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    s = sub.add_parser("score", help="score records and keep the educational ones")
    s.add_argument("--classifier", type=Path, required=True)
    s.add_argument("--input", type=Path, nargs="+", required=True)
    s.add_argument("--out", type=Path, required=True, help="every record with its score (JSON Lines)")
    s.add_argument("--kept", type=Path, help="the records at or above --threshold (JSON Lines)")
    s.add_argument("--threshold", type=float, default=0.5)
    s.add_argument("--text-field", default="text")
    s.add_argument("--checkpoint", type=Path, help="where the classifier's checkpoint is now, if moved")
    args = p.parse_args(argv)
    try:
        if args.command == "fit":
            result = fit(args.labelled, args.checkpoint, args.out, args.text_field, args.label_field, args.max_tokens)
        else:
            result = score(args.classifier, args.input, args.out, args.kept, args.threshold,
                           RecordOptions(text_field=args.text_field), args.checkpoint)
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
