"""benchmarks.evaluate: LM-Eval Harness on a package (our adapter) and on its checkpoint (the harness's HF path)
give the same loglikelihoods for an fp32 export, on a local task (lm-eval reads JSON data without the hub)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lm_eval")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.evaluate import PackageLM, checkpoint_lm, evaluate  # noqa: E402
from export.options import ExportOptions  # noqa: E402
from export.package import export_package  # noqa: E402
from tests.test_export import make_checkpoint  # noqa: E402
from tests.test_runtime import make_tokenizer  # noqa: E402

DOCS = [
    {"question": "The parser reads", "choices": [" the arguments", " a file", " it", " nothing at all today"], "answer": 0},
    {"question": "def add(a, b):\n    return ", "choices": ["a + b", "a - b", " a * b"], "answer": 0},
    {"question": "Options are ", "choices": ["parsed", "ignored", "help"], "answer": 2},
    {"question": "import", "choices": [" argparse", " sys\nimport os"], "answer": 1},
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    tok = make_tokenizer(tmp / "tokenizer.json")
    make_checkpoint("tiny-phi-1_5", tmp / "ckpt", tok)
    package = export_package(tmp / "ckpt", tmp / "pkg", ExportOptions(precision="fp32", kv_dtype=None), show_progress=False)
    tasks = tmp / "tasks"
    tasks.mkdir()
    (tasks / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tasks / "tiny_mc.yaml").write_text(f"""task: phiedge_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tasks / 'docs.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
""")
    return tmp / "ckpt", package, tasks


def _loglikelihoods(results) -> list[float]:
    samples = sorted(results["samples"]["phiedge_tiny_mc"], key=lambda s: s["doc_id"])
    return [resp[0] for s in samples for resp in s["filtered_resps"]]


def test_package_matches_checkpoint_on_a_local_task(models):
    checkpoint, package, tasks = models
    ours = evaluate(PackageLM(package, threads=1), ["phiedge_tiny_mc"], tasks, log_samples=True)
    hf = evaluate(checkpoint_lm(checkpoint), ["phiedge_tiny_mc"], tasks, log_samples=True)
    a, b = np.array(_loglikelihoods(ours)), np.array(_loglikelihoods(hf))
    assert a.shape == (12,) and np.isfinite(a).all() and (a < 0).all()
    print(f"loglikelihoods, package vs checkpoint: max abs diff {np.abs(a - b).max():.2e} over {a.size}")
    assert np.abs(a - b).max() < 1e-3, (a, b)
    assert ours["results"]["phiedge_tiny_mc"]["acc,none"] == hf["results"]["phiedge_tiny_mc"]["acc,none"]


def test_rolling_and_generation(models):
    _, package, _ = models
    lm = PackageLM(package, threads=1)

    class Request:
        def __init__(self, *args):
            self.args = args

    text = "usage: prog [-h] [--foo FOO]\n\n" * 20  # longer than the tiny model's context: several windows
    assert len(lm.tok_encode(text)) > lm.max_length
    (rolling,) = lm.loglikelihood_rolling([Request(text)], disable_tqdm=True)
    ids = lm.tok_encode(text)
    by_hand = 0.0  # the same windows, each scored from a fresh cache
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
    for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(ids, lm.eot_token_id, lm.max_length, 1)):
        lm.backend.truncate(0)
        rows = [lm.backend.step(ctx)] + [lm.backend.step([t]) for t in cont[:-1]]
        logp = np.log(np.exp(np.float64(rows)) / np.exp(np.float64(rows)).sum(-1, keepdims=True))
        by_hand += float(logp[np.arange(len(cont)), cont].sum())
    assert abs(rolling - by_hand) < 1e-3
    (text_out,) = lm.generate_until([Request("def ", {"until": ["\n"], "max_gen_toks": 12})], disable_tqdm=True)
    assert "\n" not in text_out and isinstance(text_out, str)


def test_cli_on_the_offline_task(tmp_path, capsys):
    from benchmarks.evaluate import main

    out = tmp_path / "results.json"
    demo = Path(__file__).resolve().parents[1] / "runtime" / "demo"
    assert main(["--package", str(demo), "--tasks", "stdlib_next_line", "--limit", "8", "--out", str(out)]) == 0
    acc = json.loads(out.read_text())["results"]["stdlib_next_line"]["acc,none"]
    assert 0 <= acc <= 1
    assert main(["--package", str(tmp_path / "none"), "--tasks", "stdlib_next_line"]) == 2
    assert "does not exist" in capsys.readouterr().err
