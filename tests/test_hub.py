"""Models by Hugging Face id (runtime/hub.py) against a Hub of our own on 127.0.0.1 (tests/hub_server.py).

The checkpoint repository is the demo's training output (train/demo) with a pickle file and a Python file beside it
that must never be requested; the package repository is runtime/demo as it is. Every CLI run is a fresh process
with HF_ENDPOINT at our server and empty huggingface_hub and phi-edge caches, as a user's first and second calls.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.hub import HubRef, hub_id
from tests.hub_server import FakeHub, Repo

ROOT = Path(__file__).resolve().parents[1]
DEMO_CKPT = ROOT / "train" / "demo"
PROMPT = "def read_config(path):"
NEW = 12


def checkpoint_repo() -> Repo:
    repo = Repo.from_folder(DEMO_CKPT)
    repo.files.update({"pytorch_model.bin": b"\x80\x04pickle", "modeling_phi.py": b"import os\nos.system('x')\n"})
    return repo


@pytest.fixture(scope="module")
def default_export(tmp_path_factory) -> Path:
    """train/demo exported locally with the default recipe: what a call by id must reproduce."""
    from export.package import export_package

    return export_package(DEMO_CKPT, tmp_path_factory.mktemp("local") / "pkg", show_progress=False)


@pytest.fixture
def hub(tmp_path):
    served = FakeHub({"acme/demo-ckpt": checkpoint_repo(),
                      "acme/demo-pkg": Repo.from_folder(ROOT / "runtime" / "demo"),
                      "acme/gated": Repo(dict(checkpoint_repo().files), gated=True),
                      "acme/pickles": Repo({"config.json": (DEMO_CKPT / "config.json").read_bytes(),
                                            "pytorch_model.bin": b"\x80\x04pickle"})})
    url = served.start()
    served.env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_CACHE": str(tmp_path / "hf"),
                  "PHI_EDGE_CACHE": str(tmp_path / "phi-edge"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    served.env.pop("HF_TOKEN", None)
    served.env.pop("HF_HUB_OFFLINE", None)
    yield served
    served.stop()


def generate(hub, model: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.generate", "--model", model, "--temperature", "0",
                           "--max-new-tokens", str(NEW), "--no-echo", "--threads", "1", *extra, PROMPT],
                          capture_output=True, text=True, cwd=ROOT, env={**hub.env, **(env or {})}, timeout=600)


def local_greedy(package: Path) -> str:
    import runtime
    from runtime.engine import EngineOptions
    from runtime.loop import GenerationConfig
    from runtime.sampling import SamplingConfig

    model = runtime.load(package, EngineOptions(threads=1))
    return model.generate(PROMPT, GenerationConfig(max_new_tokens=NEW, sampling=SamplingConfig(temperature=0))).text


def one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and out.stdout == "", out.stderr
    return errors[0]


def test_hub_ids_and_local_paths_are_told_apart(tmp_path, monkeypatch):
    assert HubRef.parse("microsoft/phi-2") == HubRef("microsoft/phi-2")
    assert HubRef.parse("microsoft/Phi-3-mini-4k-instruct-onnx@v1.0:cpu_and_mobile/cpu-int4") == HubRef(
        "microsoft/Phi-3-mini-4k-instruct-onnx", "v1.0", "cpu_and_mobile/cpu-int4")
    for local in ("/abs/path", "./pkg", "a/b/c", "a/../b", "pkg", "~/x/y"):
        assert HubRef.parse(local) is None, local
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    assert hub_id("out/phi-1_5-int4") is None  # a typo under a folder that exists here stays a local path
    assert hub_id("acme/model") == HubRef("acme/model")


def test_checkpoint_by_id_is_exported_once_then_runs_without_a_request(hub, tmp_path, default_export):
    """The checkpoint is downloaded (never its pickle or code) and exported with the default recipe; its greedy text
    is the local path's; the second call makes no request, and runs with HF_HUB_OFFLINE=1 too."""
    first = generate(hub, "acme/demo-ckpt")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.rstrip("\n") == local_greedy(default_export)
    fetched = " ".join(hub.requests)
    assert "model.safetensors" in fetched and ".bin" not in fetched and ".py" not in fetched, hub.requests
    packages = list((tmp_path / "phi-edge" / "packages").rglob("manifest.json"))
    assert len(packages) == 1, packages
    hub.requests.clear()
    again = generate(hub, "acme/demo-ckpt")
    offline = generate(hub, "acme/demo-ckpt", env={"HF_HUB_OFFLINE": "1"})
    assert again.stdout == first.stdout == offline.stdout and hub.requests == [], hub.requests


def test_package_repository_runs_as_it_is(hub):
    out = generate(hub, "acme/demo-pkg")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.rstrip("\n") == local_greedy(ROOT / "runtime" / "demo")


def test_export_takes_a_checkpoint_id(hub, tmp_path, default_export):
    """python -m export ORG/NAME OUT: the same weights, bit for bit, as exporting the local folder."""
    import json

    out = subprocess.run([sys.executable, "-m", "export", "acme/demo-ckpt", str(tmp_path / "pkg"), "--quiet"],
                         capture_output=True, text=True, cwd=ROOT, env=hub.env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got, want = (json.loads((p / "manifest.json").read_text())["files"] for p in (tmp_path / "pkg", default_export))
    assert got["model.onnx.data"] == want["model.onnx.data"] and got["tokenizer.json"] == want["tokenizer.json"]
    assert not any(".bin" in r or ".py" in r for r in hub.requests), hub.requests


def test_interrupted_download_resumes(hub, default_export):
    """The connection drops 1 MiB before the end of the weights: huggingface_hub resumes from what it kept (a Range
    request) and the run gives the same text."""
    hub.faults["model.safetensors"] = "cut"
    out = generate(hub, "acme/demo-ckpt")
    assert out.returncode == 0, out.stderr[-3000:]
    assert any("model.safetensors bytes=" in r for r in hub.requests), hub.requests
    assert out.stdout.rstrip("\n") == local_greedy(default_export)


@pytest.mark.parametrize("model, env, fault, words", [
    ("acme/nothing-here", {}, None, "is not a repository on"),
    ("acme/demo-ckpt@no-such-branch", {}, None, "has no revision 'no-such-branch'"),
    ("acme/gated", {}, None, "set HF_TOKEN or run `huggingface-cli login`"),
    ("acme/pickles", {}, None, "pickle files (pytorch_model.bin), which we never load"),
    ("acme/demo-ckpt", {"HF_HUB_OFFLINE": "1"}, None, "is not in the cache and cannot be downloaded"),
    ("acme/demo-ckpt", {}, "lie", "does not match its announced size"),
])
def test_hub_failures_are_one_line_and_leave_the_caches_consistent(hub, tmp_path, model, env, fault, words):
    if fault:
        hub.faults["model.safetensors"] = fault
    line = one_error_line(generate(hub, model, env=env))
    assert words in line, line
    ours = tmp_path / "phi-edge"
    assert not list(ours.glob("refs/**/*")) and not list(ours.glob("packages/**/manifest.json"))
    # nothing half-downloaded is left where huggingface_hub would read it as complete
    snapshots = list((tmp_path / "hf").rglob("snapshots/*/model.safetensors"))
    assert all(p.resolve().stat().st_size == (DEMO_CKPT / "model.safetensors").stat().st_size for p in snapshots)


def test_web_server_takes_an_id(hub, web_ready):
    """python -m runtime.web --package ORG/NAME serves the downloaded package."""
    import json
    import urllib.request

    server = subprocess.Popen([sys.executable, "-m", "runtime.web", "--port", "0", "--package", "acme/demo-pkg"],
                              cwd=ROOT, env=hub.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), line + server.stderr.read()
        with urllib.request.urlopen(line.split()[1] + "package/manifest.json") as r:
            assert json.loads(r.read()) == json.loads((ROOT / "runtime" / "demo" / "manifest.json").read_text())
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_runtime_only_install_is_told_to_add_the_export_extra(hub):
    """Without the export extra (no torch), a checkpoint id gets one line naming the extra; a package id still runs."""
    code = ("import sys; sys.modules['export.package'] = None; from runtime.generate import main; "
            "sys.exit(main(sys.argv[1:]))")
    args = ["--temperature", "0", "--max-new-tokens", "4", "--no-echo", "--threads", "1", PROMPT]
    refused = subprocess.run([sys.executable, "-c", code, "--model", "acme/demo-ckpt", *args], capture_output=True,
                             text=True, cwd=ROOT, env=hub.env, timeout=600)
    assert "pip install 'phi-edge[export]'" in one_error_line(refused)
    assert not any("safetensors" in r for r in hub.requests), hub.requests  # refused before any download
    runs = subprocess.run([sys.executable, "-c", code, "--model", "acme/demo-pkg", *args], capture_output=True,
                          text=True, cwd=ROOT, env=hub.env, timeout=600)
    assert runs.returncode == 0 and runs.stdout.strip(), runs.stderr[-2000:]


def test_two_threads_loading_one_id_share_one_download_and_export(hub, tmp_path):
    """runtime.load(ORG/NAME) from two threads at once (an app's embedding API): both get the same package, exported
    once, with no error."""
    code = ("import threading, runtime\n"
            "out, errors = [], []\n"
            "def load():\n"
            "    try:\n"
            "        out.append(str(runtime.load('acme/demo-ckpt').manifest.folder))\n"
            "    except BaseException as e:\n"
            "        errors.append(repr(e))\n"
            "threads = [threading.Thread(target=load) for _ in range(2)]\n"
            "[t.start() for t in threads]; [t.join() for t in threads]\n"
            "assert not errors and len(out) == 2 and out[0] == out[1], (errors, out)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=hub.env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "phi-edge" / "packages").rglob("manifest.json"))) == 1
    assert sum("GET /api/models/acme/demo-ckpt/revision/main" == r for r in hub.requests) == 1, hub.requests
