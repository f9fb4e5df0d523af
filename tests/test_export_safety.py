"""export/ on the inputs users really bring: published configs with null ids, the wrong tokenizer, damaged
weights, --force over the user's own folders, interrupted runs, full or read-only disks (issue 10)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from safetensors.torch import load_file, save_file

import runtime
from export.__main__ import main as export_main
from export.options import ExportOptions
from export.package import export_package
from runtime import files
from runtime.engine import EngineOptions
from runtime.loop import GenerationConfig
from runtime.manifest import load_manifest
from runtime.sampling import SamplingConfig
from tests.test_export import make_checkpoint
from tests.test_runtime import make_tokenizer

ROOT = Path(__file__).resolve().parents[1]
GREEDY = SamplingConfig(temperature=0)


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")  # <|endoftext|> is id 0


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tok) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "ckpt"
    make_checkpoint("tiny-phi-1_5", folder, tok)
    return folder


def _copy_checkpoint(src: Path, dst: Path, config_edit=None, tensor_edit=None) -> Path:
    dst.mkdir(parents=True)
    config = json.loads((src / "config.json").read_text())
    if config_edit:
        config_edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    tensors = load_file(src / "model.safetensors")
    if tensor_edit:
        tensor_edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    (dst / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    return dst


def _null_ids(config: dict) -> None:  # as microsoft/phi-1_5's config.json ships
    config["eos_token_id"] = None
    config["bos_token_id"] = None


def _run_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", *map(str, args), "--quiet"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess, expect: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert expect in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr


# ---------------------------------------------------------------- 1. end-of-text id


def test_null_eos_in_config_is_taken_from_the_tokenizer_and_generation_stops(ckpt, tmp_path):
    def eos_first(tensors):  # the model's first choice after any prompt is <|endoftext|> (id 0)
        tensors["lm_head.bias"][0] = 1e4

    src = _copy_checkpoint(ckpt, tmp_path / "phi-1_5-like", _null_ids, eos_first)
    package = export_package(src, tmp_path / "pkg", ExportOptions(precision="fp32", kv_dtype=None), show_progress=False)
    manifest = load_manifest(package)
    assert manifest.tokenizer["eos_token_id"] == 0 and manifest.tokenizer["bos_token_id"] == 0
    assert manifest.model["eos_token_id"] == 0
    model = runtime.load(package, EngineOptions(threads=1))
    out = model.generate("def f(x):", GenerationConfig(32, GREEDY))
    assert out.finish_reason == "eos" and out.tokens == [0] and out.text == ""


def test_package_without_any_eos_is_refused_unless_asked(ckpt, tmp_path):
    from tokenizers import Tokenizer

    tokenizer = json.loads((ckpt / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = []  # no <|endoftext|> special token
    tokenizer["model"]["vocab"] = {k: v for k, v in tokenizer["model"]["vocab"].items() if k != "<|endoftext|>"}
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(tokenizer))
    assert Tokenizer.from_file(str(plain)).token_to_id("<|endoftext|>") is None
    src = _copy_checkpoint(ckpt, tmp_path / "src", _null_ids)
    _one_line_error(_run_cli(src, tmp_path / "o1", "--tokenizer", plain), "--no-eos")
    assert not (tmp_path / "o1").exists()
    proc = _run_cli(src, tmp_path / "o2", "--tokenizer", plain, "--no-eos", "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    assert load_manifest(tmp_path / "o2").tokenizer["eos_token_id"] is None


# ---------------------------------------------------------------- 4. tokenizer against the model


def test_tokenizer_is_checked_against_the_model(ckpt, tmp_path):
    _one_line_error(_run_cli(ckpt, tmp_path / "o1", "--tokenizer", ckpt / "config.json"),
                    "is not a Hugging Face tokenizer.json")
    big = make_tokenizer(tmp_path / "big.json")
    data = json.loads(big.read_text())
    data["model"]["vocab"]["extra-token-beyond-the-embedding"] = 700  # ids up to 700, the embedding has 512
    big.write_text(json.dumps(data))
    _one_line_error(_run_cli(ckpt, tmp_path / "o2", "--tokenizer", big), "only 512 rows")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.json"]


# ---------------------------------------------------------------- 5. --force


def test_force_replaces_only_our_own_packages(ckpt, tmp_path):
    inside = tmp_path / "work" / "ckpt"
    _copy_checkpoint(ckpt, inside)
    before = sorted(p.name for p in inside.iterdir())
    _one_line_error(_run_cli(inside, inside, "--force"), "refusing --force")
    _one_line_error(_run_cli(inside, tmp_path / "work", "--force"), "refusing --force")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    _one_line_error(_run_cli(inside, mine, "--force"), "not a model package")
    assert (mine / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in inside.iterdir()) == before
    proc = subprocess.run([sys.executable, "-m", "export", str(inside), ".", "--force", "--quiet"],
                          capture_output=True, text=True, cwd=inside.parent, timeout=300)
    assert proc.returncode == 2 and "refusing --force" in proc.stderr  # the current folder holds the checkpoint

    package = tmp_path / "pkg"
    assert _run_cli(inside, package, "--precision", "fp32").returncode == 0
    first = load_manifest(package).files["model.onnx.data"]["sha256"]
    assert _run_cli(inside, package, "--precision", "int8", "--force").returncode == 0
    assert load_manifest(package).files["model.onnx.data"]["sha256"] != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "pkg", "work"]  # no .old or .tmp left


def test_replace_dir_keeps_the_old_folder_if_the_new_one_cannot_move_in(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a").write_text("old")
    tmp = files.make_tmp_dir(tmp_path / "out")
    (tmp / "a").write_text("new")
    real = os.replace
    seen = []

    def failing(src, dst):
        seen.append((Path(src).name, Path(dst).name))
        if Path(src) == tmp:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        files.replace_dir(tmp, tmp_path / "out")
    assert (tmp_path / "out" / "a").read_text() == "old"  # moved aside, then back
    assert seen[0][1].startswith(".out.old-")


# ---------------------------------------------------------------- 6. ONNX IR version and onnxruntime


def test_package_is_stamped_ir_10_and_names_the_onnxruntime_it_needs(ckpt, tmp_path):
    fp32 = export_package(ckpt, tmp_path / "fp32", ExportOptions(precision="fp32", kv_dtype=None), show_progress=False)
    int4 = export_package(ckpt, tmp_path / "int4", ExportOptions(precision="int4", kv_dtype="float32"),
                          show_progress=False)
    kv8 = export_package(ckpt, tmp_path / "kv8", ExportOptions(precision="int4", kv_dtype="int8"), show_progress=False)
    # int4 with the default int8 embedding (the demo package's, float32 cache); then with an int8 KV cache as well
    for package, needs in ((fp32, "1.20.0"), (int4, "1.23.0"), (kv8, "1.27.0")):
        model = onnx.load(str(package / "model.onnx"), load_external_data=False)
        assert model.ir_version == 10
        assert {(o.domain, o.version) for o in model.opset_import} == {("", 17), ("com.microsoft", 1)}
        manifest = load_manifest(package)
        assert manifest.min_onnxruntime == needs
        manifest.check_onnxruntime(needs)
        with pytest.raises(ValueError, match=f"needs onnxruntime >= {needs} but 1.19.2 is installed"):
            manifest.check_onnxruntime("1.19.2")
    demo = load_manifest(runtime.DEFAULT_PACKAGE)
    assert demo.min_onnxruntime == "1.23.0"
    assert onnx.load(str(demo.folder / "model.onnx"), load_external_data=False).ir_version == 10


# ---------------------------------------------------------------- 7. interrupted exports


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sigterm_cleans_up_and_stale_temp_folders_are_removed(ckpt, tmp_path):
    stale = tmp_path / f".pkg.tmp-{_dead_pid()}"
    stale.mkdir()
    (stale / "model.onnx.data").write_bytes(b"\0" * 1024)
    alive = tmp_path / f".pkg.tmp-{os.getppid()}"  # a writer that is still running keeps its folder
    alive.mkdir()
    slow = ("import sys, time, export.graph as g; real = g.quantize; "
            "g.quantize = lambda *a, **k: (time.sleep(0.3), real(*a, **k))[1]; "
            "from export.__main__ import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", slow, str(ckpt), str(tmp_path / "pkg"), "--quiet"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mine = tmp_path / f".pkg.tmp-{proc.pid}"
    deadline = time.monotonic() + 60
    while not (mine / "model.onnx.data").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mine.is_dir() and not stale.exists()  # the dead writer's folder went when the new run started
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err)
    assert "nothing was written" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name]


# ---------------------------------------------------------------- 8. NaN / Inf weights


def test_nan_or_inf_weights_are_refused_with_the_tensor_name(ckpt, tmp_path):
    def poison(tensors):
        tensors["model.layers.1.mlp.fc2.weight"][3, 5] = float("nan")
        tensors["model.layers.1.mlp.fc2.weight"][4, 5] = float("inf")

    bad = _copy_checkpoint(ckpt, tmp_path / "bad", tensor_edit=poison)
    _one_line_error(_run_cli(bad, tmp_path / "pkg"), "'model.layers.1.mlp.fc2.weight'")
    assert "2 NaN or infinite" in _run_cli(bad, tmp_path / "pkg").stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


# ---------------------------------------------------------------- 10. one line, nothing half-written


def test_export_errors_are_one_line(ckpt, tmp_path):
    missing = _copy_checkpoint(ckpt, tmp_path / "missing", lambda c: c.pop("hidden_size"))
    _one_line_error(_run_cli(missing, tmp_path / "o1"), "lacks the required field 'hidden_size'")
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "config.json").write_text("[1, 2]")
    _one_line_error(_run_cli(listed, tmp_path / "o2"), "not an object")
    (tmp_path / "a-file").write_text("mine")
    _one_line_error(_run_cli(ckpt, tmp_path / "a-file"), "is a file")
    assert (tmp_path / "a-file").read_text() == "mine"


@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "free some space"), (errno.EACCES, "may write to"),
                                       (errno.EROFS, "writable disk")])
def test_disk_errors_are_one_line_and_leave_nothing(code, fix, ckpt, tmp_path, monkeypatch, capsys):
    import export.weights

    def failing_write(self, name, array):
        raise OSError(code, os.strerror(code), str(self.path))

    monkeypatch.setattr(export.weights.WeightWriter, "add", failing_write)
    assert export_main([str(ckpt), str(tmp_path / "pkg"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fix in err and os.strerror(code) in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []
