"""A training run's output folder: what may be started or resumed in it, and what is kept.

    OUT/latest                     tag of the last checkpoint written completely (the resume point)
    OUT/deepspeed/step-NNNNNNNN/   DeepSpeed state, one zero_pp_rank_R_* file per data-parallel rank
    OUT/checkpoints/step-NNNNNNNN/ Hugging Face checkpoints, the newest --keep kept
    OUT/log.jsonl                  one JSON object per logged step and evaluation, each step once

Everything here is checked before DeepSpeed starts, so a refused run writes nothing. No torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from runtime import files

LATEST = "latest"
KEEP_DEEPSPEED_STATES = 2  # older DeepSpeed states are deleted once a newer one is complete
_RANK_FILE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")
UNIVERSAL_HOWTO = ("python -m deepspeed.checkpoint.ds_to_universal --input_folder {state} --output_folder "
                   "{state}-universal")


def tag(step: int) -> str:
    return f"step-{step:08d}"


def prepare(out: Path, resume: bool) -> str | None:
    """Checks the output folder; returns the tag to resume from, or None for a fresh run."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a folder")
    latest = out / LATEST
    if resume:
        if not latest.is_file():
            return None
        tag_text = latest.read_text(errors="replace").strip()
        if not re.fullmatch(r"step-\d{8}", tag_text):
            raise ValueError(f"{latest} holds {tag_text[:40]!r}, not a checkpoint tag such as step-00000500; write the "
                             f"tag of a complete checkpoint into it, or start a new run")
        return tag_text
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty; pass --resume to continue the run in it, or choose a "
                         f"new folder")
    return None


# Options that decide the optimization: a resumed run must keep the run's own (train_config.json). The others
# (how long, how often to save, evaluate and log, micro batch, attention kernel, where the data lies) may change.
FIXED_ON_RESUME = ("preset", "init_from", "seq_len", "global_batch", "lr", "warmup_steps", "betas", "eps",
                   "weight_decay", "grad_clip", "precision", "zero_stage", "seed", "extra")


def check_resume_options(out: Path, train: dict, model: dict) -> None:
    """Refuses a --resume whose options or model differ from what the run was started with, before DeepSpeed."""
    path = out / "train_config.json"
    if not path.is_file():
        return  # a run from before train_config.json recorded them
    try:
        saved = json.loads(path.read_text())
        before, before_model = saved["train"], saved["model"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is damaged; restore it, or start a new run in another --out") from None
    changed = [f"--{k.replace('_', '-')} {train.get(k)!r} (the run has {before.get(k)!r})" for k in FIXED_ON_RESUME
               if _plain(train.get(k)) != _plain(before.get(k))]
    if changed:
        raise ValueError(f"--resume keeps the run's own settings, but {'; '.join(changed)}; resume with the run's "
                         f"values (train_config.json), or start a new run in another --out")
    if model != before_model:
        keys = sorted(k for k in set(model) | set(before_model) if model.get(k) != before_model.get(k))
        raise ValueError(f"--resume would build another model than the run's ({', '.join(keys[:5])} differ); resume "
                         f"with the run's --preset or --init-from, or start a new run in another --out")


def _plain(value):
    """JSON's view of a value: tuples are lists, so (0.9, 0.98) equals the [0.9, 0.98] read back."""
    return json.loads(json.dumps(value))


def saved_world_size(state: Path) -> int | None:
    """Data-parallel ranks that wrote a DeepSpeed ZeRO state folder (from its file names; nothing unpickled)."""
    ranks = {int(m.group(1)) for p in state.iterdir() if (m := _RANK_FILE.match(p.name))} if state.is_dir() else set()
    return max(ranks) + 1 if ranks else None


def check_world_size(out: Path, resume_tag: str, world_size: int) -> None:
    """A ZeRO state is split per rank: resuming on another number of ranks needs DeepSpeed's conversion."""
    state = out / "deepspeed" / resume_tag
    saved = saved_world_size(state)
    if saved is not None and saved != world_size:
        raise ValueError(
            f"the checkpoint {resume_tag} in {out} was saved by {saved} rank{'s' * (saved > 1)} but this launch has "
            f"{world_size}; resume with {saved}, or convert the state once to DeepSpeed's universal format "
            f"({UNIVERSAL_HOWTO.format(state=state)}) and resume with --universal-checkpoint")


def check_tokenizer(tokenizer: Path, sources) -> None:
    """Every source was tokenized with one tokenizer, and it is the one the checkpoints will ship."""
    known = {}
    for source in sources:
        sha = source.info.tokenizer_sha256
        if sha:
            known.setdefault(sha, []).append(source.name)
    if len(known) > 1:
        listing = "; ".join(f"{', '.join(names)} with {sha[:12]}" for sha, names in known.items())
        raise ValueError(f"the data was tokenized with {len(known)} different tokenizers ({listing}); token ids "
                         f"mean different things in each, so re-tokenize every source with one tokenizer.json")
    mine = hashlib.sha256(tokenizer.read_bytes()).hexdigest()
    if known and mine not in known:
        raise ValueError(f"tokenizer {tokenizer} (sha256 {mine[:12]}) is not the one the data was tokenized with "
                         f"({next(iter(known))[:12]}); pass that tokenizer.json with --tokenizer")


def truncate_log(log: Path, step: int) -> None:
    """Drops what a killed run logged after the checkpoint it resumes from, so each step is logged once."""
    if not log.is_file():
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by the kill
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    files.write_text(log, "".join(f"{line}\n" for line in kept))


def prune(folder: Path, keep: int) -> None:
    """Deletes all but the newest `keep` step-* folders (names sort by step)."""
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
