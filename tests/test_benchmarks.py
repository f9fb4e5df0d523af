"""benchmarks/: the tools run end to end on the demo model and write every key; peers never faked."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import stats as keys

ROOT = Path(__file__).resolve().parents[1]
DEMO_PACKAGE = ROOT / "runtime" / "demo"
DEMO_CHECKPOINT = ROOT / "train" / "demo"


def test_latency_writes_every_stats_key(tmp_path):
    from benchmarks import latency

    out = tmp_path / "latency.json"
    assert latency.main(["--model", str(DEMO_PACKAGE), "--repeats", "1", "--threads", "1", "--prompt-len", "16",
                         "--new-tokens", "8", "--no-bandwidth", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["sampling"] for r in report["runs"]] == ["greedy", "default"]  # what users run, beside greedy
    for run in report["runs"]:
        for summary in ("median", "min", "max"):
            missing = [k for k in keys.KEYS if k != keys.FINISH_REASON and run[summary].get(k) is None]
            assert not missing, f"{summary} lacks {missing}"
        assert set(keys.KEYS) <= set(run["samples"][0])
        assert run["samples"][0][keys.NEW_TOKENS] == 8 and run["samples"][0][keys.PROMPT_TOKENS] == 16
        assert run[keys.PACKAGE_BYTES] > 0 and run[keys.LOAD_S] > 0
    (ratio,) = report["default_over_greedy"].values()
    assert len(ratio["rounds"]) == 1 and ratio["median"] > 0
    assert report["machine"]["cores"] >= 1


def test_quality_writes_json_and_plot(tmp_path):
    from benchmarks import plots, quality

    out = tmp_path / "quality.json"
    assert quality.main(["--recipes", "int4:rtn:32", "--seq-len", "32", "--max-tokens", "96", "--threads", "1",
                         "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["recipe"] for r in rows] == ["fp32", "int4 rtn b32"]
    assert rows[0]["mean_kl_vs_fp32"] == 0 and rows[1]["mean_kl_vs_fp32"] > 0
    assert all(r["perplexity"] > 1 and r["package_bytes"] > 0 for r in rows)
    assert plots.main(["--quality", str(out), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "perplexity_by_size.png").stat().st_size > 0


def test_missing_peer_is_skipped_with_reason(tmp_path):
    """A bare venv (no pip, no site-packages) holds none of the peers, whatever this machine has installed."""
    from benchmarks import peers

    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    out = tmp_path / "peers.json"
    assert peers.main(["--checkpoint", str(DEMO_CHECKPOINT), "--systems", "llama.cpp Q4_0", "optimum fp32",
                       "--peer-python", str(venv / "bin" / "python"), "--work", str(tmp_path / "work"),
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
    assert "llama_cpp is not importable" in rows[0]["reason"]
    assert "optimum.onnxruntime is not importable" in rows[1]["reason"]
    assert "skipped: llama_cpp is not importable" in peers.table(rows)


def _always_predicts(folder: Path, token: int) -> Path:
    """A tiny phi checkpoint whose lm_head ignores the input: zero weight, a bias of +40 on `token`."""
    torch = pytest.importorskip("torch")
    import transformers

    from train.config import preset

    torch.manual_seed(0)
    model = transformers.PhiForCausalLM(transformers.PhiConfig(**preset("tiny-phi-1_5").to_hf_dict()))
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[token] = 40.0  # p(token) = 1 / (1 + 511 e^-40), log-ppl ~ 2e-15
    model.save_pretrained(folder)
    return folder


def test_perplexity_of_a_perfect_prediction_is_one(tmp_path):
    from benchmarks.perplexity import WindowScorer, mean_nll
    from export.options import ExportOptions
    from export.package import export_package

    from tests.test_runtime import make_tokenizer

    checkpoint = _always_predicts(tmp_path / "ckpt", token=7)
    package = export_package(checkpoint, tmp_path / "pkg", ExportOptions(precision="fp32", logits="all"),
                             tokenizer=make_tokenizer(tmp_path / "tokenizer.json"), show_progress=False)
    scorer = WindowScorer(package, threads=1)
    assert math.exp(mean_nll(scorer, [np.full(33, 7, np.int64)] * 2)) == pytest.approx(1.0, abs=1e-4)
    other = np.random.default_rng(0).integers(8, 512, 33)  # tokens it never predicts: perplexity far above 1
    assert math.exp(mean_nll(scorer, [other])) > 1e6


def test_peers_run_interleaved_rounds_and_ratios_per_round(tmp_path):
    """Each system runs once per round in a fresh process (A B, then B A); the ratio to the best peer is taken
    within each round and reported as median and spread."""
    from benchmarks import peers

    out = tmp_path / "peers.json"
    assert peers.main(["--checkpoint", str(DEMO_CHECKPOINT), "--systems", "phi-edge int4 b32", "transformers fp32",
                       "--peer-python", sys.executable, "--rounds", "2", "--repeats", "1", "--prompt-len", "8",
                       "--new-tokens", "4", "--threads", "1", "--work", str(tmp_path / "work"),
                       "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    ours, theirs = report["results"]
    assert report["rounds"] == 2 and [len(r["rounds"]) for r in (ours, theirs)] == [2, 2]
    assert all(len(r["samples"]) == 2 for r in (ours, theirs))  # one measured call per round
    decode = ours["ratio_to_best_peer"]["decode"]
    assert decode["rounds"] == 2 and decode["min"] <= decode["median"] <= decode["max"] and decode["min"] > 0
    assert theirs["ratio_to_best_peer"]["decode"]["median"] == pytest.approx(1.0)
    assert f"{decode['median']:.2f}x ({decode['min']:.2f}-{decode['max']:.2f})" in peers.table(report["results"])
