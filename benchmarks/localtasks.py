"""A multiple-choice task made from data this machine has, for LM-Eval Harness without the Hugging Face hub.

stdlib_next_line: from each held-out module of the demo corpus (whole stdlib modules the demo model never saw,
decoded from train/demo/heldout), pick lines; the question is the 12 lines before one, the choices are that line
and 3 lines drawn from other held-out modules, in a seeded random order. Accuracy is loglikelihood-based
(the harness's `acc`, and `acc_norm` by length), as ARC or HellaSwag are scored.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = "stdlib_next_line"
CONTEXT_LINES = 12
CHOICES = 4


def _candidate(line: str) -> bool:
    s = line.strip()
    return 12 <= len(s) <= 100 and not s.startswith("#")


def heldout_modules(heldout: Path, tokenizer: Path) -> list[str]:
    from tokenizers import Tokenizer

    from train.data import load_source

    source = load_source(heldout)
    ids = source.read(0, source.num_tokens)
    tok = Tokenizer.from_file(str(tokenizer))
    docs, start = [], 0
    for end in [int(i) for i in (ids == source.info.eos_id).nonzero()[0]] + [len(ids)]:
        if end > start:
            docs.append(tok.decode(ids[start:end].tolist()))
        start = end + 1
    return docs


def write_task(out: Path, docs: list[str], n: int = 200, seed: int = 0) -> tuple[Path, str]:
    """Writes OUT/stdlib_next_line.jsonl and the task YAML; returns (include_path, task name)."""
    rng = random.Random(seed)
    lines = [[ln for ln in d.splitlines()] for d in docs]
    pool = [(i, ln.strip()) for i, doc in enumerate(lines) for ln in doc if _candidate(ln)]
    places = [(i, k) for i, doc in enumerate(lines) for k in range(CONTEXT_LINES, len(doc)) if _candidate(doc[k])]
    rng.shuffle(places)
    items = []
    for i, k in places[:n]:
        answer = lines[i][k].strip()
        distractors = set()
        while len(distractors) < CHOICES - 1:
            j, other = rng.choice(pool)
            if j != i and other != answer:
                distractors.add(other)
        choices = sorted(distractors) + [answer]
        rng.shuffle(choices)
        context = "\n".join(lines[i][k - CONTEXT_LINES:k]) + "\n" + lines[i][k][:len(lines[i][k]) -
                                                                             len(lines[i][k].lstrip())]
        items.append({"context": context, "choices": choices, "answer": choices.index(answer)})
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in items))
    (out / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""")
    return out, TASK


def demo_task(out: Path, n: int = 200, seed: int = 0) -> tuple[Path, str]:
    demo = ROOT / "train" / "demo"
    return write_task(out, heldout_modules(demo / "heldout", demo / "tokenizer.json"), n, seed)
