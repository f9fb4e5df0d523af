"""Tokenizing at the report's scale: processes, machines, resume.

    python -m train.data shards --input web/ --tokenizer tok.json --out data/web --jobs 16
    python -m train.data shards ... --out data/web --jobs 16 --part 3/8        # machine 3 of 8
    python -m train.data merge --input data/web.parts/slice-* --out data/web    # after copying the parts together

The input files are cut into slices of about equal bytes (a deterministic plan, written to OUT.parts/plan.json).
Each slice is tokenized by one of --jobs processes into its own complete shard folder, OUT.parts/slice-NNNNN/,
written atomically: an interrupted run keeps every finished slice and the same command does only the rest, and
a machine given --part K/M does the slices whose number is K modulo M. When every slice is there, they are merged
into OUT (shards hard-linked, not copied) and OUT.parts is removed. Parallelism is across files: a corpus of
one huge file is one slice (split it first).

merge unites any shard folders into one source after checking that one tokenizer made them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from runtime import files as atomic
from train.data import SourceInfo, ShardInfo, _check_out_dir, _tmp_sibling, load_source, tokenize_to_shards
from train.records import RecordOptions

PLAN_FORMAT = "phi-shards-plan/1"
SLICES_PER_JOB = 8  # more slices than processes: balanced load and finer-grained resume


def parse_part(text: str) -> tuple[int, int]:
    """"K/M" -> (K, M), 0 <= K < M."""
    try:
        k, m = (int(x) for x in text.split("/"))
        if 0 <= k < m:
            return k, m
    except ValueError:
        pass
    raise ValueError(f"--part {text!r} is not K/M with 0 <= K < M (machine K of M, counted from 0)")


def plan_slices(files: list[Path], slices: int) -> list[list[Path]]:
    """Files into `slices` lists of about equal total bytes (largest first, each to the lightest slice)."""
    slices = max(1, min(slices, len(files)))
    sizes = {f: Path(f).stat().st_size for f in files}
    groups: list[list[Path]] = [[] for _ in range(slices)]
    weight = [0] * slices
    for f in sorted(files, key=lambda f: (-sizes[f], str(f))):
        i = weight.index(min(weight))
        groups[i].append(f)
        weight[i] += sizes[f]
    return [sorted(g, key=str) for g in groups]


def _worker_init(threads: int, parent: int) -> None:
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # tokenizers' pool: cores shared among the processes
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides and ends us
    tqdm.set_lock(threading.RLock())  # not tqdm's multiprocessing lock, a semaphore a terminated worker would leak
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    """Ends this worker once its parent is gone (killed outright: no one would ever send it work or end it)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _slice_star(args: tuple) -> tuple[str, int]:
    return _slice_job(*args)


def _slice_job(files: list[str], tokenizer: str, out: str, shard_tokens: int, records: dict) -> tuple[str, int]:
    info = tokenize_to_shards([Path(f) for f in files], Path(tokenizer), Path(out), shard_tokens=shard_tokens,
                              records=RecordOptions(**records), progress=False)
    return out, info.num_tokens


def tokenize_parallel(files: list[Path], tokenizer: Path, out: Path, jobs: int = 1, slices: int | None = None,
                      part: tuple[int, int] = (0, 1), shard_tokens: int = 2**24, force: bool = False,
                      records: RecordOptions = RecordOptions()) -> SourceInfo | None:
    """Tokenizes this machine's slices; merges into OUT when every slice exists. None while others are missing."""
    if jobs < 1:
        raise ValueError(f"--jobs {jobs} must be >= 1")
    out = Path(out)
    _check_out_dir(out, force, marker="source.json")
    work = out.with_name(out.name + ".parts")
    tok_sha = hashlib.sha256(Path(tokenizer).read_bytes()).hexdigest()
    groups = plan_slices([Path(f) for f in files], slices or jobs * part[1] * SLICES_PER_JOB)
    plan = {"format": PLAN_FORMAT, "tokenizer_sha256": tok_sha, "records": asdict(records),
            "shard_tokens": shard_tokens, "slices": [[str(f) for f in g] for g in groups]}
    plan_path = work / "plan.json"
    if plan_path.is_file():
        if json.loads(plan_path.read_text()) != plan:
            if not force:
                raise ValueError(f"{work} holds slices of another job (other files, tokenizer or settings); pass "
                                 f"--force to start over, or another --out")
            shutil.rmtree(work)  # ours: it has our plan.json
    elif work.exists() and any(work.iterdir()):
        raise ValueError(f"{work} exists without plan.json, so train.data did not write it; move it away")
    work.mkdir(parents=True, exist_ok=True)
    atomic.write_text(plan_path, json.dumps(plan, indent=1) + "\n")
    k, m = part
    slice_dir = [work / f"slice-{i:05d}" for i in range(len(groups))]
    mine = [i for i in range(len(groups)) if i % m == k]
    todo = [i for i in mine if not (slice_dir[i] / "source.json").is_file()]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"slices -> {out.name}", unit="slice",
              file=sys.stderr) as bar:
        if jobs == 1:
            for i in todo:
                _slice_job([str(f) for f in groups[i]], str(tokenizer), str(slice_dir[i]), shard_tokens, asdict(records))
                bar.update(1)
        else:
            tasks = [([str(f) for f in groups[i]], str(tokenizer), str(slice_dir[i]), shard_tokens, asdict(records))
                     for i in todo]
            # Leaving the block (done, an error, Ctrl-C, SIGTERM) terminates the workers; a slice is complete only
            # once renamed into place, so a rerun redoes just the unfinished ones.
            pool = get_context("spawn").Pool(jobs, _worker_init, (threads, os.getpid()))
            try:
                for _ in pool.imap_unordered(_slice_star, tasks):
                    bar.update(1)
                pool.close()
            finally:
                pool.terminate()
                pool.join()
    done = [d for d in slice_dir if (d / "source.json").is_file()]
    if len(done) < len(slice_dir):
        print(f"{len(done)} of {len(slice_dir)} slices are in {work}; the rest belong to other --part machines. "
              f"When all are there: python -m train.data merge --input {work}/slice-* --out {out}", file=sys.stderr)
        return None
    info = merge_sources(done, out, force=force)
    shutil.rmtree(work)
    return info


def merge_sources(folders: list[Path], out: Path, force: bool = False) -> SourceInfo:
    """One source from several shard folders (in the order given), shards hard-linked (copied across devices)."""
    if not folders:
        raise ValueError("no shard folders to merge; pass --input with the slice folders")
    out = Path(out)
    _check_out_dir(out, force, marker="source.json")
    sources = [load_source(f) for f in folders]
    keys = ("tokenizer_sha256", "vocab_size", "eos_id", "dtype")
    first = sources[0].info
    for s in sources[1:]:
        for key in keys:
            if getattr(s.info, key) != getattr(first, key):
                raise ValueError(f"{s.path} has {key} {getattr(s.info, key)!r} but {first.path} has "
                                 f"{getattr(first, key)!r}: shard folders made with different tokenizers cannot be "
                                 f"one source; re-tokenize them with one tokenizer.json")
    tmp = _tmp_sibling(out)
    try:
        shards = []
        for s in sources:
            for shard in s.info.shards:
                name = f"shard_{len(shards):05d}.bin"
                try:
                    os.link(s.path / shard.file, tmp / name)
                except OSError:
                    shutil.copyfile(s.path / shard.file, tmp / name)
                shards.append(ShardInfo(name, shard.num_tokens))
        info = SourceInfo(path=out, dtype=first.dtype, num_tokens=sum(x.num_tokens for x in shards),
                          num_documents=sum(s.info.num_documents for s in sources), shards=tuple(shards),
                          eos_id=first.eos_id, vocab_size=first.vocab_size, tokenizer_sha256=first.tokenizer_sha256)
        (tmp / "source.json").write_text(json.dumps(info.to_json(), indent=1) + "\n", encoding="utf-8")
        atomic.replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info
