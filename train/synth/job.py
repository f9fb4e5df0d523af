"""The generation job, resumable:

    OUT/synth.json         what decides the replies (topics, options, teacher, snippets): a rerun with others is
                           refused rather than mixed in; other gates or evaluation sets only refilter raw.jsonl
    OUT/subtopics.json     topic -> subtopics, asked of the teacher once
    OUT/raw.jsonl          every reply, one JSON object per line, appended as it arrives (flushed): a killed
                           run keeps every finished reply, and a rerun asks only for the missing ones
    OUT/textbooks.jsonl    the replies that pass the quality gates, in request order: what train.data reads
                           (`python -m train.data shards --input OUT/textbooks.jsonl ...`)
    OUT/report.json        counts per gate, requests, teacher, time
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from runtime import files as atomic
from train.records import RecordOptions, iter_documents
from train.synth.filters import GateOptions, QualityGates
from train.synth.prompts import EXPAND, make_requests, parse_subtopics
from train.synth.teacher import Teacher

FORMAT = "phi-synth/1"


@dataclass(frozen=True)
class SynthOptions:
    subtopics: int = 4  # asked of the teacher per seed topic
    per_subtopic: int = 2  # requests per subtopic (kinds alternate: textbook, exercises)
    max_tokens: int = 512
    temperature: float = 0.8
    seed: int = 0
    concurrency: int = 8  # requests in flight (an HTTP teacher); the in-process teacher runs one at a time

    def __post_init__(self) -> None:
        for name in ("subtopics", "per_subtopic", "max_tokens", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def read_topics(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"topic file {path} does not exist; write one seed topic per line")
    topics = [t.strip() for t in path.read_text(encoding="utf-8-sig").splitlines()]
    topics = list(dict.fromkeys(t for t in topics if t and not t.startswith("#")))
    if not topics:
        raise ValueError(f"topic file {path} has no topics; write one seed topic per line (# starts a comment)")
    return topics


def _read_raw(path: Path) -> tuple[dict[str, dict], list[int]]:
    """(finished replies by request id, numbers of damaged lines). A damaged line is skipped, reported and asked
    again; every other reply is kept. Only a last line without its newline (a write cut short by a kill) is cut off
    the file, so that the next reply starts on a line of its own."""
    done: dict[str, dict] = {}
    damaged: list[int] = []
    if not path.is_file():
        return done, damaged
    end = 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                break  # the unfinished last line
            end += len(line)
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                record = None
            if not (isinstance(record, dict) and isinstance(record.get("id"), str)
                    and isinstance(record.get("text"), str)):
                damaged.append(n)
                continue
            done[record["id"]] = record
    if end != path.stat().st_size:
        os.truncate(path, end)
    return done, damaged


def _prepare(out: Path, settings: dict, force: bool) -> None:
    marker = out / "synth.json"
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} is a file; choose a folder with --out")
    if out.is_dir() and any(out.iterdir()):
        if not marker.is_file():
            raise ValueError(f"{out} is not empty and has no synth.json, so train.synth did not write it; "
                             f"choose another folder")
        old = json.loads(marker.read_text())
        if old != settings:
            if not force:
                changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise ValueError(f"{out} was generated with other settings ({', '.join(changed)}); pass --force to "
                                 f"start over, or choose another folder")
            for name in ("synth.json", "subtopics.json", "raw.jsonl", "textbooks.jsonl", "report.json"):
                (out / name).unlink(missing_ok=True)  # only what this job writes
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(marker, json.dumps(settings, indent=1) + "\n")


def _subtopics(out: Path, topics: list[str], teacher: Teacher, o: SynthOptions) -> dict[str, list[str]]:
    path = out / "subtopics.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    for i, topic in enumerate(tqdm([t for t in topics if t not in known], desc="subtopics", unit="topic",
                                   file=sys.stderr)):
        reply = teacher.complete(EXPAND.format(n=o.subtopics, topic=topic), max_tokens=24 * o.subtopics,
                                 temperature=0.7, seed=o.seed + i)
        known[topic] = parse_subtopics("1." + reply, o.subtopics)
        atomic.write_text(path, json.dumps(known, indent=1, ensure_ascii=False) + "\n")
    return known


def run(topics_file: Path, out: Path, teacher: Teacher, options: SynthOptions = SynthOptions(),
        gates: GateOptions = GateOptions(), evaluation: list[Path] = (), eval_records: RecordOptions = RecordOptions(),
        snippets: list[Path] = (), force: bool = False) -> dict:
    """Generates, filters and reports; returns the report (also written to OUT/report.json)."""
    t0 = time.perf_counter()
    out = Path(out)
    topics = read_topics(topics_file)
    # What decides the replies; the gates and evaluation sets may change between runs (the output is rebuilt
    # from raw.jsonl each time), so they are in the report, not here.
    settings = {"format": FORMAT, "topics": topics, "options": asdict(options), "teacher": teacher.name,
                "snippets": [str(p) for p in snippets]}
    _prepare(out, settings, force)
    snippet_texts = [d for p in snippets for d in iter_documents(p, eval_records)]
    subtopics = _subtopics(out, topics, teacher, options)
    requests = [r for t in topics for r in make_requests(t, subtopics.get(t, []), options.per_subtopic,
                                                         options.seed, snippet_texts)]
    raw_path = out / "raw.jsonl"
    done, damaged = _read_raw(raw_path)
    if damaged:
        print(f"warning: {raw_path}: {len(damaged)} damaged line{'s' * (len(damaged) > 1)} skipped (line "
              f"{', '.join(map(str, damaged[:5]))}{' ...' if len(damaged) > 5 else ''}); their requests are asked "
              f"again, every other reply is kept", file=sys.stderr)
    todo = [r for r in requests if r.id not in done]
    lock = threading.Lock()
    with open(raw_path, "a", encoding="utf-8") as raw, \
            tqdm(total=len(requests), initial=len(requests) - len(todo), desc="textbooks", unit="request",
                 file=sys.stderr) as bar, ThreadPoolExecutor(max_workers=options.concurrency) as pool:
        futures = {pool.submit(teacher.complete, r.prompt, max_tokens=options.max_tokens,
                               temperature=options.temperature, seed=r.seed): r for r in todo}
        try:
            for future in as_completed(futures):
                r = futures[future]
                record = {"id": r.id, "topic": r.topic, "subtopic": r.subtopic, "kind": r.kind,
                          "audience": r.audience, "style": r.style, "text": future.result().strip()}
                with lock:
                    raw.write(json.dumps(record, ensure_ascii=False) + "\n")
                    raw.flush()
                done[r.id] = record
                bar.update(1)
        except BaseException:
            for f in futures:
                f.cancel()  # finished replies are in raw.jsonl; a rerun asks for the rest
            raise
    evaluation_texts = (d for p in evaluation for d in iter_documents(p, eval_records))
    quality = QualityGates(gates, evaluation_texts)
    kept = chars_kept = 0
    tmp = out / f"textbooks.jsonl.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in requests:  # request order, so the same raw replies always give the same output
                record = done[r.id]
                if quality.check(record["text"]) is None:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                    kept += 1
                    chars_kept += len(record["text"])
        os.replace(tmp, out / "textbooks.jsonl")
    finally:
        tmp.unlink(missing_ok=True)
    report = {"teacher": teacher.name, "gates": asdict(gates), "evaluation": [str(p) for p in evaluation],
              "topics": len(topics),
              "subtopics": sum(len(subtopics.get(t, [])) for t in topics), "requests": len(requests),
              "generated_now": len(todo), "damaged_raw_lines": len(damaged),
              "removed": {g: quality.counts[g] for g in QualityGates.GATES},
              "kept": kept, "evaluation_items": quality.decontaminator.items,
              "chars_kept": chars_kept, "seconds": round(time.perf_counter() - t0, 2)}
    atomic.write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    return report
