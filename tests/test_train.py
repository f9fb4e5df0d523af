"""Training with real DeepSpeed ZeRO-2 in bf16 on the CPU: loss goes down, resume is exact, checkpoints load
in transformers, bad input is refused before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.data import train_tokenizer, tokenize_to_shards
from train.mixture import write_mixture

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny-phi-1_5", "--seq-len", "32", "--global-batch", "8", "--micro-batch", "4",
        "--lr", "3e-3", "--eval-tokens", "2000", "--log-every", "1"]


def _corpus_files(folder: Path, n: int, seed: int) -> list[Path]:
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True)
    words = ["def", "return", "self", "for", "in", "range", "if", "else", "print", "import", "x", "y"]
    files = []
    for i in range(n):
        lines = [f"def f{i}_{j}(x):\n    return x {rng.choice('+-*')} {rng.randint(0, 99)}\n" for j in range(20)]
        lines += [" ".join(rng.choice(words) for _ in range(12)) + "\n" for _ in range(20)]
        path = folder / f"m{i}.py"
        path.write_text("".join(lines))
        files.append(path)
    return files


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    train_files = _corpus_files(root / "src", 30, 0)
    heldout_files = _corpus_files(root / "held", 3, 1)
    train_tokenizer(train_files, 400, root / "tokenizer.json")
    tokenize_to_shards(train_files, root / "tokenizer.json", root / "train")
    tokenize_to_shards(heldout_files, root / "tokenizer.json", root / "heldout")
    write_mixture(root / "mixture.json", [("code", "train", 1.0)], heldout=[("heldout", "heldout")])
    return root / "mixture.json"


def run_train(*args, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "train", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    run_train(*TINY, "--data", data, "--out", out, "--max-steps", 24, "--eval-every", 12, "--save-every", 12)
    return out


def test_deepspeed_zero2_bf16_loss_goes_down(trained):
    config = json.loads((trained / "train_config.json").read_text())
    assert config["deepspeed"]["zero_optimization"]["stage"] == 2
    assert config["deepspeed"]["bf16"]["enabled"] and not config["deepspeed"]["fp16"]["enabled"]
    assert config["optimizer"] == {"type": "torch.optim.AdamW", "params": {
        "lr": 3e-3, "betas": [0.9, 0.98], "eps": 1e-7, "weight_decay": 0.1}}
    log = _log(trained)
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 1.0
    heldout = [r["heldout_loss"] for r in log if "heldout_loss" in r]
    assert len(heldout) == 2 and heldout[1] < heldout[0]
    assert (trained / "latest").read_text().strip() == "step-00000024"


def test_checkpoint_loads_in_transformers_with_same_logits(trained):
    transformers = pytest.importorskip("transformers")
    from train import load_pretrained

    folder = trained / "checkpoints" / "step-00000024"
    assert {"config.json", "model.safetensors", "tokenizer.json", "trainer_state.json"} <= \
        {p.name for p in folder.iterdir()}
    ours = load_pretrained(folder)
    hf = transformers.PhiForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 400, (1, 20))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max() <= 1e-5


def test_resume_after_a_kill_is_bitwise_exact_and_logs_each_step_once(data, tmp_path):
    """6 steps straight equal 5 steps killed before their last save (so the run resumes from step 3) then resumed
    to 6: every weight bit for bit, every logged loss, each step logged once. On a CPU the trainer uses torch's
    AdamW because DeepSpeed's CPU Adam computes its first step after a resume differently (about 1 ulp)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = [*TINY, "--data", data, "--eval-every", 100, "--save-every", 3]
    run_train(*common, "--out", straight, "--max-steps", 6)
    run_train(*common, "--out", split, "--max-steps", 5)
    for part in ("deepspeed", "checkpoints"):  # killed after logging step 5, before its checkpoint was complete
        shutil.rmtree(split / part / "step-00000005")
    (split / "latest").write_text("step-00000003\n")
    with open(split / "log.jsonl", "a") as log:
        log.write('{"step": 5, "loss": 4.3')  # a line cut off by the kill
    run_train(*common, "--out", split, "--max-steps", 6, "--resume")
    for tag in ("step-00000003", "step-00000006"):
        a = load_file(straight / "checkpoints" / tag / "model.safetensors")
        b = load_file(split / "checkpoints" / tag / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), tag
    state = lambda out: json.loads((out / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    assert state(straight)["sampler"] == state(split)["sampler"]
    assert state(straight)["tokens"] == state(split)["tokens"]
    steps = lambda out: [r["step"] for r in _log(out) if "loss" in r]
    losses = lambda out: [r["loss"] for r in _log(out) if "loss" in r]
    assert steps(split) == steps(straight) == [1, 2, 3, 4, 5, 6]
    assert losses(split) == losses(straight)
    assert all(r["skipped_steps"] == 0 and r["skipped"] is False for r in _log(split) if "loss" in r)


@pytest.mark.parametrize("name", ["tiny-phi-3", "tiny-phi-4-mini"])
def test_a_phi3_shape_trains_with_the_same_recipe(name, data, tmp_path):
    import transformers

    out = tmp_path / "out"
    args = [a if a != "tiny-phi-1_5" else name for a in TINY]
    run_train(*args, "--data", data, "--out", out, "--max-steps", 6, "--eval-every", 3, "--save-every", 6)
    heldout = [r["heldout_loss"] for r in _log(out) if "heldout_loss" in r]
    assert heldout[1] < heldout[0]
    folder = out / "checkpoints" / "step-00000006"
    reference = transformers.Phi3ForCausalLM.from_pretrained(folder).eval()
    from train import load_pretrained

    ours = load_pretrained(folder)
    ids = torch.randint(0, 400, (1, 24))
    with torch.no_grad():
        assert (ours(ids) - reference(ids).logits).abs().max().item() <= 1e-4

    # Fine-tuning: the same recipe from the checkpoint's weights, its shape from its config.json.
    tuned = tmp_path / "tuned"
    rest = [a for a in args[2:]]  # TINY without --preset NAME
    run_train(*rest, "--init-from", folder, "--data", data, "--out", tuned, "--max-steps", 2, "--eval-every", 100)
    losses = lambda out: [r["loss"] for r in _log(out) if "loss" in r]
    assert losses(tuned)[0] < losses(out)[0] - 0.5  # it starts where the first run ended, not from scratch
    assert abs(losses(tuned)[0] - losses(out)[-1]) < 0.5
    refused = run_train(*args, "--init-from", folder, "--data", data, "--out", tmp_path / "both", check=False)
    assert refused.returncode == 2 and "not both" in refused.stderr


def test_only_the_newest_checkpoints_are_kept(data, tmp_path):
    out = tmp_path / "out"
    run_train(*TINY, "--data", data, "--out", out, "--max-steps", 4, "--save-every", 1, "--eval-every", 100,
              "--keep", 2)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003", "step-00000004"]
    assert sorted(p.name for p in (out / "deepspeed").glob("step-*")) == ["step-00000003", "step-00000004"]
    assert (out / "latest").read_text().strip() == "step-00000004"


def test_only_rank_0_keeps_the_gathered_weights(monkeypatch):
    import deepspeed.utils

    from train.trainer import _full_fp32_state

    model = torch.nn.Linear(4, 3)
    gathered = []
    monkeypatch.setattr(deepspeed.utils, "safe_get_full_fp32_param",
                        lambda p: gathered.append(p) or p.detach().clone())
    engine = type("Engine", (), {"module": model})()
    assert _full_fp32_state(engine, rank=1) == {} and len(gathered) == 2  # every rank joins each collective
    state = _full_fp32_state(engine, rank=0)
    assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], model.weight)


def test_broken_flash_attn_falls_back_to_sdpa_with_a_warning(tmp_path, monkeypatch, caplog):
    from train import attention

    fake = tmp_path / "flash_attn"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c10')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    attention.flash_attn_available.cache_clear()
    try:
        with caplog.at_level("WARNING", logger=attention.__name__):
            assert attention.flash_attn_available() is False
        assert "does not import" in caplog.text and "undefined symbol" in caplog.text
        q = torch.randn(1, 2, 3, 8)
        assert attention.select_backend("auto", q) == "sdpa"
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            attention.check_backend("flash", cuda=False, precision="bf16")
        with pytest.raises(ValueError, match="importable"):
            attention.check_backend("flash", cuda=True, precision="fp16")
    finally:
        attention.flash_attn_available.cache_clear()


@pytest.mark.parametrize("case", ["missing data", "unknown preset", "bad weight", "non-empty out",
                                  "batch mismatch", "empty corpus", "flash on cpu", "mixed tokenizers",
                                  "other tokenizer"])
def test_bad_input_is_refused_and_nothing_is_written(case, data, tmp_path):
    out = tmp_path / "out"
    args = [*TINY, "--data", data, "--out", out, "--max-steps", 1]
    expect = {"missing data": "does not exist", "unknown preset": "unknown preset", "bad weight": "weight",
              "non-empty out": "not empty", "batch mismatch": "global batch 10", "empty corpus": "empty",
              "flash on cpu": "--attention flash needs a CUDA GPU", "mixed tokenizers": "2 different tokenizers",
              "other tokenizer": "is not the one the data was tokenized with"}[case]
    if case == "missing data":
        args[args.index("--data") + 1] = tmp_path / "nope.json"
    elif case == "unknown preset":
        args[args.index("--preset") + 1] = "phi-5"
    elif case == "bad weight":
        bad = json.loads(data.read_text())
        bad["sources"][0]["weight"] = -1
        (data.parent / "bad.json").write_text(json.dumps(bad))
        args[args.index("--data") + 1] = data.parent / "bad.json"
    elif case == "non-empty out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "batch mismatch":
        args[args.index("--global-batch") + 1] = 10
    elif case == "flash on cpu":
        args += ["--attention", "flash"]
    elif case in ("mixed tokenizers", "other tokenizer"):
        root = data.parent
        other = train_tokenizer(sorted((root / "src").glob("*.py")), 300, tmp_path / "other" / "tokenizer.json")
        if case == "other tokenizer":
            args += ["--tokenizer", other]
        else:
            tokenize_to_shards(sorted((root / "src").glob("*.py"))[:5], other, root / f"other-{tmp_path.name}")
            write_mixture(tmp_path / "mixed.json", [("a", str(root / "train"), 1.0),
                                                    ("b", str(root / f"other-{tmp_path.name}"), 1.0)])
            args[args.index("--data") + 1] = tmp_path / "mixed.json"
            args += ["--tokenizer", root / "tokenizer.json"]
    elif case == "empty corpus":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "a.py").write_text("")
        proc = subprocess.run([sys.executable, "-m", "train.data", "shards", "--input", tmp_path / "empty",
                               "--tokenizer", data.parent / "tokenizer.json", "--out", tmp_path / "shards"],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and "empty" in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "shards").exists()
        return
    proc = run_train(*args, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expect in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    if case == "non-empty out":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    elif case == "flash on cpu":
        assert not out.exists()
    else:
        assert not out.exists()


def test_recipe_defaults_are_the_phi_1_5_report():
    from train.recipe import TrainConfig

    cfg = TrainConfig(preset="phi-1_5", data=Path("m.json"), out=Path("o"))
    ds = cfg.deepspeed_config(world_size=32, cuda=True)
    assert ds["train_batch_size"] == 2048 and ds["gradient_accumulation_steps"] == 8
    assert ds["fp16"]["enabled"] and ds["fp16"]["loss_scale"] == 0 and not ds["bf16"]["enabled"]
    assert ds["optimizer"]["params"] == {"lr": 2e-4, "betas": [0.9, 0.98], "eps": 1e-7, "weight_decay": 0.1}
    assert ds["zero_optimization"]["stage"] == 2 and "scheduler" not in ds
    assert cfg.deepspeed_config(world_size=1, cuda=False)["bf16"]["enabled"]
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        TrainConfig(preset="demo", data=Path("m"), out=Path("o"), precision="fp16").deepspeed_config(1, False)
    with pytest.raises(ValueError, match="global batch 2048 != micro batch 8 x gradient accumulation"):
        cfg.deepspeed_config(world_size=3, cuda=True)


def test_deepspeed_launcher_with_two_ranks_matches_one_process(data, tmp_path):
    """The multi-node path is the same code: DeepSpeed's own launcher starts two CPU ranks, each takes its rows of
    every global batch, ZeRO-2 averages their gradients; the result matches one process with the same global
    batch (bf16 rounding apart: the reduction order differs)."""
    common = ["--preset", "tiny-phi-1_5", "--seq-len", 32, "--global-batch", 8, "--lr", 3e-3, "--eval-tokens", 2000,
              "--data", data, "--eval-every", 100, "--save-every", 3, "--log-every", 1, "--max-steps", 3]
    one, two = tmp_path / "one", tmp_path / "two"
    run_train(*common, "--micro-batch", 4, "--out", one)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
                           "29561", "--module", "train", *map(str, common), "--micro-batch", "2", "--out", str(two)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    setup = json.loads((two / "train_config.json").read_text())["deepspeed"]
    assert setup["gradient_accumulation_steps"] == 2  # 8 = 2 micro x 2 accumulation x 2 ranks
    heldout = lambda out: [r["heldout_loss"] for r in _log(out) if "heldout_loss" in r][-1]
    assert heldout(two) == pytest.approx(heldout(one), abs=2e-3)
    a = load_file(one / "checkpoints" / "step-00000003" / "model.safetensors")
    b = load_file(two / "checkpoints" / "step-00000003" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 0.03  # a few Adam steps of lr 3e-3
    # The logged loss is the mean over both ranks' rows: before any update it is the one process's loss.
    first = lambda out: next(r["loss"] for r in _log(out) if "loss" in r)
    assert first(two) == pytest.approx(first(one), abs=1e-4)

    # Resuming the two-rank state on one process: refused with the conversion, then done through it.
    refused = run_train(*common[:-1], 5, "--micro-batch", 4, "--out", two, "--resume", check=False)
    assert refused.returncode == 2 and "saved by 2 ranks but this launch has 1" in refused.stderr
    assert "ds_to_universal" in refused.stderr and "Traceback" not in refused.stderr
    state = two / "deepspeed" / "step-00000003"
    convert = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                              str(state), "--output_folder", f"{state}-universal"], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=300)
    assert convert.returncode == 0, convert.stderr[-3000:]
    run_train(*common[:-1], 5, "--micro-batch", 4, "--out", two, "--resume", "--universal-checkpoint")
    steps = [r["step"] for r in _log(two) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5]
    run_train(*common[:-1], 5, "--micro-batch", 4, "--out", one, "--resume")
    a = load_file(one / "checkpoints" / "step-00000005" / "model.safetensors")
    b = load_file(two / "checkpoints" / "step-00000005" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 0.03


def test_resume_never_unpickles_code_and_keeps_the_runs_settings(data, tmp_path):
    """A pickled object planted in a run's DeepSpeed state does not run on --resume (weights_only loads,
    train/states.py), and options that decide the optimization cannot change on resume (issue 21 A, H)."""
    out = tmp_path / "out"
    run_train(*TINY, "--data", data, "--out", out, "--max-steps", 2, "--save-every", 2, "--eval-every", 100)
    marker = tmp_path / "ran"
    state = out / "deepspeed" / "step-00000002" / "mp_rank_00_model_states.pt"
    saved = torch.load(state, weights_only=False)  # our own file, written by this test's run
    saved["planted"] = _Planted(str(marker))
    torch.save(saved, state)
    proc = run_train(*TINY, "--data", data, "--out", out, "--max-steps", 3, "--resume", check=False)
    assert proc.returncode == 2 and not marker.exists(), proc.stderr[-2000:]
    assert "does not unpickle" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    for changed, named in ((["--lr", "1e-3"], "--lr 0.001 (the run has 0.003)"),
                           (["--preset", "tiny-phi-2"], "--preset 'tiny-phi-2' (the run has 'tiny-phi-1_5')"),
                           (["--weight-decay", "0.5"], "--weight-decay 0.5 (the run has 0.1)")):
        args = list(TINY)
        for flag, value in zip(changed[::2], changed[1::2]):
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        proc = run_train(*args, "--data", data, "--out", out, "--max-steps", 3, "--resume", check=False)
        assert proc.returncode == 2 and named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "DeepSpeed" not in proc.stderr.replace(named, "")  # refused before DeepSpeed started
    (out / "latest").write_text("../../../elsewhere\n")
    proc = run_train(*TINY, "--data", data, "--out", out, "--max-steps", 3, "--resume", check=False)
    assert proc.returncode == 2 and "not a checkpoint tag" in proc.stderr


class _Planted:
    """Unpickling it would create a file: the proof that code ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))
