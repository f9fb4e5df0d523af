"""python -m train.demo_report RUN DEST: publish a training run's last checkpoint as the committed demo model.

Copies the Hugging Face checkpoint and the held-out shards into DEST, then measures what train/README.md
reports: held-out perplexity of the published (fp16) weights next to a unigram baseline fitted on the
training shards, and a few greedy completions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from .checkpoint import load_pretrained
from .data import load_source
from .mixture import heldout_batches, load_mixture
from .model import greedy_generate
from .run_dir import LATEST
from .trainer import evaluate

PROMPTS = ["def fibonacci(n):\n", "import os\nimport sys\n\n\ndef main(", "class Stack:\n    def __init__(self):\n",
           "    for i in range(len(items)):\n"]
FILES = ("config.json", "model.safetensors", "tokenizer.json", "trainer_state.json")


def unigram_loss(train_sources, heldout, seq_len: int, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of add-one-smoothed training token frequencies on the held-out targets."""
    counts = np.ones(vocab_size, dtype=np.float64)
    for src in train_sources:
        for shard in src.shards:
            counts += np.bincount(np.asarray(shard), minlength=vocab_size)[:vocab_size]
    logp = np.log(counts / counts.sum())
    total, n = 0.0, 0
    for rows in heldout_batches(heldout, seq_len):
        targets = rows[:, 1:].ravel()
        total -= logp[targets].sum()
        n += targets.size
    return total / n


QUICK_TOKENS = 16384  # a fixed prefix of the held-out split that tests re-evaluate quickly


def heldout_loss(model, heldout_dir: Path, seq_len: int, max_tokens: int = 10**12) -> float:
    return evaluate(model, [load_source(heldout_dir)], seq_len, max_tokens, "cpu")


def completions(model, checkpoint: Path, max_new_tokens: int = 40) -> list[dict]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    out = []
    for prompt in PROMPTS:
        ids = greedy_generate(model, tok.encode(prompt).ids, max_new_tokens, model.config.eos_token_id)
        out.append({"prompt": prompt, "completion": tok.decode(ids)})
    return out


def publish(run: Path, dest: Path) -> dict:
    tag = (run / LATEST).read_text().strip()
    ckpt = run / "checkpoints" / tag
    setup = json.loads((run / "train_config.json").read_text())
    mixture = load_mixture(Path(setup["train"]["data"]))
    seq_len = setup["train"]["seq_len"] or setup["model"]["max_position_embeddings"]
    heldout_src = mixture.heldout[0].path
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in FILES:
        shutil.copyfile(ckpt / name, tmp / name)
    shutil.copytree(heldout_src, tmp / "heldout")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    model = load_pretrained(tmp)  # fp32 compute from the published fp16 weights
    loss = heldout_loss(model, tmp / "heldout", seq_len)
    base = unigram_loss([load_source(s.path) for s in mixture.sources], load_source(tmp / "heldout"), seq_len,
                        setup["model"]["vocab_size"])
    metrics = {
        "run_tag": tag, "preset": setup["train"]["preset"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": state["tokens"], "train_seconds": round(state["train_seconds"], 1),
        "eval_seq_len": seq_len, "heldout_tokens": load_source(tmp / "heldout").num_tokens - 1,
        "heldout_loss": loss, "heldout_ppl": math.exp(loss),
        "heldout_loss_quick": heldout_loss(model, tmp / "heldout", seq_len, QUICK_TOKENS), "quick_tokens": QUICK_TOKENS,
        "unigram_loss": base, "unigram_ppl": math.exp(base),
        "completions": completions(model, tmp),
        "command": "bash train/make_demo.sh",
    }
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.demo_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="training output folder (python -m train --out)")
    parser.add_argument("dest", type=Path, help="where the demo checkpoint goes (train/demo)")
    args = parser.parse_args(argv)
    try:
        metrics = publish(args.run, args.dest)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in metrics.items() if k != "completions"}, indent=2))
    for c in metrics["completions"]:
        print(f"--- {c['prompt']!r}\n{c['prompt']}{c['completion']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
