"""benchmarks/: the tools run end to end on the demo model and write every key; peers never faked."""

from __future__ import annotations

import json
import math
import statistics
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
                         "--task-docs", "12", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    for r in rows:  # the demo model gets the offline next-line task through LM-Eval Harness
        acc = r["tasks"]["stdlib_next_line"]
        assert 0 <= acc["acc"] <= 1 and 0 <= acc["acc_norm"] <= 1
    assert [r["recipe"] for r in rows] == ["fp32 kv32", "int4 rtn b32"]  # the reference: float weights and cache
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
    assert [r["status"] for r in rows] == ["skipped"] * 4  # a row per system and sampling (greedy, default)
    assert [r["sampling"] for r in rows] == ["greedy", "default"] * 2
    assert "llama_cpp is not importable" in rows[0]["reason"]
    assert "optimum.onnxruntime is not importable" in rows[2]["reason"]
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
    """Each system runs once per round and sampling in a fresh process (A B, then B A); the ratio to the best peer
    of the same sampling is taken within each round and reported as median and spread."""
    from benchmarks import peers

    out = tmp_path / "peers.json"
    assert peers.main(["--checkpoint", str(DEMO_CHECKPOINT), "--systems", "phi-edge int4 b32", "transformers fp32",
                       "--peer-python", sys.executable, "--rounds", "2", "--repeats", "1", "--prompt-len", "8",
                       "--new-tokens", "4", "--threads", "1", "--work", str(tmp_path / "work"),
                       "--sampling", "greedy", "default", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    ours, ours_default, theirs, theirs_default = report["results"]
    rows = report["results"]
    assert [r["sampling"] for r in rows] == ["greedy", "default"] * 2
    assert report["rounds"] == 2 and [len(r["rounds"]) for r in rows] == [2] * 4
    assert all(len(r["samples"]) == 2 for r in rows)  # one measured call per round
    for mine, peer in ((ours, theirs), (ours_default, theirs_default)):
        decode = mine["ratio_to_best_peer"]["decode"]
        assert decode["rounds"] == 2 and decode["min"] <= decode["median"] <= decode["max"] and decode["min"] > 0
        assert peer["ratio_to_best_peer"]["decode"]["median"] == pytest.approx(1.0)
        per_round = [statistics.median(s[keys.DECODE_TOKENS_PER_S] for s in mine["rounds"][i]["samples"])
                     / statistics.median(s[keys.DECODE_TOKENS_PER_S] for s in peer["rounds"][i]["samples"])
                     for i in range(2)]  # against the peer of the same sampling, round by round
        assert decode["median"] == pytest.approx(statistics.median(per_round))
        assert f"{decode['median']:.2f}x ({decode['min']:.2f}-{decode['max']:.2f})" in peers.table(rows)
        pair = next(q for q in report["pairs"] if q["sampling"] == mine["sampling"])
        assert (pair["ours"], pair["peer"]) == (mine["system"], peer["system"])
        assert pair["decode"]["median"] == pytest.approx(decode["median"])  # one peer: the pair is the best peer
        cpu = [statistics.median(s[keys.CPU_S_PER_TOKEN] for s in peer["rounds"][i]["samples"])
               / statistics.median(s[keys.CPU_S_PER_TOKEN] for s in mine["rounds"][i]["samples"]) for i in range(2)]
        assert pair["CPU per token"]["median"] == pytest.approx(statistics.median(cpu))  # theirs over ours


def test_quality_recipe_flags_choose_export_options():
    from benchmarks.quality import Recipe

    recipe = Recipe.parse("int4:rtn:128:head4:emb4")
    options = recipe.options()
    assert (recipe.label, options.block_size, options.lm_head, options.embedding, options.kv_dtype) == \
        ("int4 rtn b128 head4 emb4", 128, "int4", "int4", None)  # export's default cache without a kv flag
    assert Recipe.parse("int4:kv16").options().kv_dtype == "float16"
    assert Recipe.parse("int4:kv4").options().kv_dtype == "int4" and Recipe.parse("fp32:kv32").options().kv_dtype == "float32"
    plain = Recipe.parse("int8").options()  # the architecture's defaults stand without a flag
    assert plain.lm_head is None and plain.for_model("phi").lm_head == "int8"
    edges = Recipe.parse("int4:head4").options().for_model("phi3")  # the flag sets one, the default the other
    assert (edges.lm_head, edges.embedding) == ("int4", "int8")
    with pytest.raises(ValueError, match="FLAG one of"):
        Recipe.parse("int4:rtn:128:head3")


def test_lookup_summary_models_each_system_from_its_own_passes():
    from benchmarks.lookup import fit, modes, summarize

    a, b, err = fit({"ms": {"1": 30.0, "2": 37.0, "3": 44.0}})
    assert (round(a, 6), round(b, 6), err < 1e-9) == (23.0, 7.0, True)
    assert modes("phi-edge") == ("plain", "ngram") and modes("llama.cpp") == ("plain", "lookup")

    def run(mode, tokens, rate, passes, fed):
        return {"prompt": 0, "mode": mode, "tokens": tokens, "decode_tok_s": rate, "passes": passes, "fed": fed}

    plain, same = list(range(9)), list(range(9))
    rounds = [{"runs": [run("plain", plain, 100.0, 8, 8), run("ngram", same, 150.0, 4, 8)]},
              {"runs": [run("ngram", same, 170.0, 4, 8), run("plain", plain, 110.0, 8, 8)]}]
    row = summarize(rounds, 1, (23.0, 7.0))["ngram"][0]
    assert row["identical"] and row["tokens_per_pass"] == 2.0
    assert row["speedup"] == pytest.approx(160.0 / 105.0)
    # plain: 8 passes of one token, 8 * 30 ms; lookup: 4 passes feeding 8 tokens, 4 * 23 + 8 * 7 ms
    assert row["modelled_speedup"] == pytest.approx((8 * 30.0) / (4 * 23.0 + 8 * 7.0))
    rounds[1]["runs"][0]["tokens"] = [0, 1, 2, 7]
    assert not summarize(rounds, 1, None)["ngram"][0]["identical"]


def test_lookup_runs_ours_on_the_benchmark_prompts_and_skips_a_missing_peer(tmp_path):
    from benchmarks import lookup

    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    out = tmp_path / "lookup.json"
    assert lookup.main(["--systems", "phi-edge", "llama.cpp", "--peer-python", str(venv / "bin" / "python"),
                        "--no-cost", "--new-tokens", "12", "--rounds", "1", "--work", str(tmp_path / "work"),
                        "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["systems"]["llama.cpp"]["status"] == "skipped"
    rows = report["systems"]["phi-edge"]["per_prompt"]["ngram"]
    assert len(rows) == len(report["prompts"]) == 12 and all(r["identical"] for r in rows)
    assert all(r["passes"] <= 11 and r["fed"] >= r["passes"] for r in rows)


def test_kv_kernel_times_each_cache_dtype(tmp_path):
    from benchmarks import kv_kernel

    out = tmp_path / "kernel.json"
    assert kv_kernel.main(["--positions", "32", "--seconds", "0.01", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["kind"] for r in rows] == ["float32", "float16", "int8", "int4"]
    assert all(r["ms_per_layer_step"] > 0 for r in rows)


def test_memory_probe_reports_each_level_and_the_summary_takes_medians(tmp_path):
    """The probe on the demo package (a fresh process, as benchmarks.memory runs it), then the summary and the
    ratios on two rounds of it against a stand-in reference row."""
    from benchmarks import memory
    from runtime.pipeline import DEFAULT_PACKAGE

    system = memory.SYSTEMS["phi-edge kv int8"]
    rounds = [memory.probe(system, {"artifact": str(DEFAULT_PACKAGE), "python": sys.executable}, [0, 64, 200], 4, 50,
                           1, 4096) for _ in range(2)]
    assert [r["status"] for r in rounds] == ["ok", "ok"], rounds
    levels = rounds[0]["levels"]
    assert [lv["held"] for lv in levels] == [1, 64, 200]  # level 0 holds one token; decoded tokens count after
    assert all(lv["decode_tokens_per_s"] > 0 and lv["peak_rss_bytes"] >= lv["rss_bytes"] > 0 for lv in levels)
    row = {"system": system.name, "kind": "ours", "rounds": rounds}
    memory.summarize(row)
    ref = {"system": "onnxruntime-genai default", "kind": "genai", "rounds": rounds}
    memory.summarize(ref)
    ratios = memory.ratios([row, ref])
    assert ratios["reference"] == "onnxruntime-genai default"
    same = ratios[system.name]["rss_per_1k_tokens"]
    assert same is None or same == pytest.approx(1.0)  # None: RSS did not grow over these few positions
    assert set(ratios[system.name]["peak_rss"]) == {0, 64, 200}
    assert "phi-edge kv int8" in memory.table([row, ref])


def test_attribution_keeps_decode_runs_and_splits_the_lm_head():
    """Prompt runs (over 3x the median) start generations; the first generation and each prompt run are dropped;
    kernels inside a run are summed per op, the run's last MatMulNBits counted as the lm_head."""
    from benchmarks.attribution import decode_runs, per_token

    events, ts = [], 0

    def run(dur: int, kernels: list[tuple[str, int]]) -> None:
        nonlocal ts
        events.append({"cat": "Session", "name": "model_run", "ts": ts, "dur": dur})
        t = ts + 1
        for op, d in kernels:
            events.append({"cat": "Node", "name": f"{op}_x_kernel_time", "ts": t, "dur": d, "args": {"op_name": op}})
            events.append({"cat": "Node", "name": f"{op}_x_fence_before", "ts": t, "dur": 0, "args": {"op_name": op}})
            t += d
        ts += dur + 10

    step = [("MatMulNBits", 20), ("GroupQueryAttention", 5), ("MatMulNBits", 30), ("MatMulNBits", 7)]
    for generation in range(3):
        run(1000, [("MatMulNBits", 900)])  # the prompt
        for _ in range(4):
            run(70 if generation else 90, step)  # the first generation (warm-up) is slower, and dropped
    runs = decode_runs(events)
    assert len(runs) == 8 and all(r["run"] == 70 for r in runs)
    assert runs[0]["kernels"] == {"MatMulNBits": 50, "GroupQueryAttention": 5, "MatMulNBits (lm_head)": 7}
    figures = per_token(runs)
    assert figures["session_run_ms"] == pytest.approx(0.070) and figures["executor_ms"] == pytest.approx(0.008)
    with pytest.raises(ValueError, match="no model_run"):
        decode_runs([e for e in events if e["cat"] == "Node"])
