"""The committed demo model: it loads, it learned, and its quantized packages keep its quality."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.quality import Recipe, evaluate, windows
from train import load_pretrained
from train.data import load_source
from train.trainer import evaluate as torch_heldout_loss

DEMO = Path(__file__).resolve().parents[1] / "train" / "demo"
METRICS = json.loads((DEMO / "metrics.json").read_text())


def test_demo_checkpoint_loads_and_reproduces_its_recorded_heldout_loss():
    model = load_pretrained(DEMO)
    assert model.config.vocab_size == 4096 and sum(p.numel() for p in model.parameters()) == METRICS["parameters"]
    assert (DEMO / "model.safetensors").stat().st_size <= 20 * 2**20
    # The recorded figure on a fixed prefix of the held-out split (the full split is recorded too; same code).
    loss = torch_heldout_loss(model, [load_source(DEMO / "heldout")], METRICS["eval_seq_len"],
                              METRICS["quick_tokens"], "cpu")
    assert loss == pytest.approx(METRICS["heldout_loss_quick"], abs=1e-4)
    # It learned: far below the unigram baseline fitted on the training split.
    assert METRICS["heldout_ppl"] < METRICS["unigram_ppl"] / 10 and math.exp(loss) < METRICS["unigram_ppl"] / 10


@pytest.fixture(scope="module")
def quality():
    wins = windows(DEMO / "heldout", 512, 16384)
    recipes = [Recipe("fp32", flags=("kv32",)), Recipe("int8", "rtn", 32), Recipe("int4", "rtn", 32), Recipe("int4", "hqq", 32)]
    return wins, {r["recipe"]: r for r in evaluate(DEMO, recipes, wins)}


def test_onnx_fp32_perplexity_equals_pytorch(quality):
    wins, rows = quality
    model = load_pretrained(DEMO)
    with torch.no_grad():
        nll = [torch.nn.functional.cross_entropy(model(torch.from_numpy(w[None, :-1]))[0], torch.from_numpy(w[1:]),
                                                 reduction="sum").item() for w in wins]
    assert rows["fp32 kv32"]["nll"] == pytest.approx(sum(nll) / sum(len(w) - 1 for w in wins), rel=1e-5)


def test_quantized_perplexity_within_budget(quality):
    _, rows = quality
    for name, row in rows.items():
        print(f"{name}: perplexity {row['perplexity']:.3f} ({100 * row['perplexity_vs_fp32']:+.2f} %), "
              f"KL {row['mean_kl_vs_fp32']:.5f}")
    assert rows["int8 rtn b32"]["perplexity_vs_fp32"] <= 0.02
    assert min(rows["int4 rtn b32"]["perplexity_vs_fp32"], rows["int4 hqq b32"]["perplexity_vs_fp32"]) <= 0.10
    assert all(np.isfinite(r["mean_kl_vs_fp32"]) and r["mean_kl_vs_fp32"] >= 0 for r in rows.values())
