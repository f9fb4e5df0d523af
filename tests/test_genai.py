"""onnxruntime-genai packages run as they are (runtime/genai.py): a tiny package written by genai's own builder,
against genai's own Generator, locally and by Hugging Face id from a Hub of our own (tests/hub_server.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is in the dev extra")

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "def add(a, b):"
NEW = 24


@pytest.fixture(scope="module")
def genai_package(tmp_path_factory) -> Path:
    """tiny Phi-3 (every embedding row a token, so nothing is suppressed) through genai's builder: int4, CPU."""
    from tests.phi3_fixtures import make_checkpoint

    root = tmp_path_factory.mktemp("genai")
    make_checkpoint("tiny-phi-3", root / "ckpt", "llama", seed=6, longrope=None, max_position_embeddings=512,
                    vocab_size=431)
    out = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(root / "ckpt"), "-m",
                          "tiny", "-o", str(root / "pkg"), "-p", "int4", "-e", "cpu", "-c", str(root / "cache")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "pkg"


def genai_greedy(package: Path, ids: list[int], new: int) -> list[int]:
    model = og.Model(str(package))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + new, min_length=len(ids) + new)
    generator = og.Generator(model, params)
    generator.append_tokens([ids])
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def test_genai_package_greedy_equals_genais_generator(genai_package):
    import runtime
    from runtime.engine import EngineOptions
    from runtime.loop import GenerationConfig
    from runtime.sampling import SamplingConfig

    model = runtime.load(genai_package, EngineOptions(threads=1))
    c = model.manifest.contract
    assert (c.logits, c.kv_dtype, c.keeps_logits, model.manifest.max_length) == ("all", "float32", False, 512)
    out = model.generate(PROMPT, GenerationConfig(max_new_tokens=NEW, stop_at_eos=False,
                                                  sampling=SamplingConfig(temperature=0)))
    assert out.tokens == genai_greedy(genai_package, model.encode(PROMPT), NEW)
    assert "chat" in model.manifest.templates and model.manifest.stop_token_ids  # its template and eos ids


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["model"].update(type="phi3v", vision={"filename": "vision.onnx"}), "phi3v package with a vision"),
    (lambda c: c["model"]["decoder"]["session_options"].update(provider_options=[{"cuda": {}}]), "built for cuda"),
    (lambda c: c["model"]["decoder"]["inputs"].update(past_key_names="past.%d.k"), "not as our contract does"),
])
def test_what_cannot_run_is_one_line(genai_package, tmp_path, edit, words):
    package = shutil.copytree(genai_package, tmp_path / "pkg")
    config = json.loads((package / "genai_config.json").read_text())
    edit(config)
    (package / "genai_config.json").write_text(json.dumps(config))
    out = subprocess.run([sys.executable, "-m", "runtime.generate", "--model", str(package), "x"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and words in lines[0], out.stderr


def test_genai_package_by_id_in_a_subfolder(genai_package, tmp_path):
    """--model ORG/NAME:SUBFOLDER, as Microsoft's published repositories lay their variants out."""
    from tests.hub_server import FakeHub, Repo

    repo = Repo({f"cpu_and_mobile/cpu-int4/{p.name}": p.read_bytes() for p in genai_package.iterdir() if p.is_file()})
    repo.files["README.md"] = b"variants per folder"
    hub = FakeHub({"acme/tiny-onnx": repo})
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}  # online, anonymous
    env.update({"HF_ENDPOINT": hub.start(), "HF_HUB_CACHE": str(tmp_path / "hf"),
                "PHI_EDGE_CACHE": str(tmp_path / "phi-edge"), "HF_HUB_DISABLE_TELEMETRY": "1"})
    try:
        args = ["--temperature", "0", "--max-new-tokens", str(NEW), "--ignore-eos", "--no-echo", "--threads", "1",
                PROMPT]
        by_id = subprocess.run([sys.executable, "-m", "runtime.generate", "--model",
                                "acme/tiny-onnx:cpu_and_mobile/cpu-int4", *args], capture_output=True, text=True,
                               cwd=ROOT, env=env, timeout=600)
        local = subprocess.run([sys.executable, "-m", "runtime.generate", "--model", str(genai_package), *args],
                               capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert by_id.returncode == 0 and local.returncode == 0, by_id.stderr[-2000:] + local.stderr[-2000:]
        assert by_id.stdout == local.stdout and by_id.stdout.strip()
        assert not any("README" in r for r in hub.requests), hub.requests  # only the asked folder is fetched
    finally:
        hub.stop()


def test_cli_samples_as_the_package_says(genai_package):
    """genai_config.json's search section sets the CLI's sampling defaults: do_sample false is greedy (our own
    default would sample at 0.7), a flag given still wins."""
    import runtime
    from runtime.genai import sampling_defaults

    assert sampling_defaults({"do_sample": False, "top_k": 50}) == {"temperature": 0.0}
    assert sampling_defaults({"do_sample": True, "temperature": 0.6, "top_k": 5, "top_p": 0.9,
                              "repetition_penalty": 1.1}) == {"temperature": 0.6, "top_k": 5, "top_p": 0.9,
                                                              "repetition_penalty": 1.1}
    ids = runtime.load(genai_package).encode(PROMPT)
    run = lambda *flags: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "runtime.generate", "--model", str(genai_package), "--json", "--ignore-eos",
         "--max-new-tokens", str(NEW), "--threads", "1", *flags, PROMPT], capture_output=True, text=True, cwd=ROOT,
        timeout=300)
    default = run()
    assert default.returncode == 0, default.stderr[-2000:]
    assert json.loads(default.stdout)["tokens"] == genai_greedy(genai_package, ids, NEW)
    sampled = [json.loads(run("--temperature", "1.0", "--seed", str(seed)).stdout)["tokens"] for seed in (1, 2, 3)]
    assert any(tokens != json.loads(default.stdout)["tokens"] for tokens in sampled)


def test_longrope_genai_package_recomputes_at_its_switch(tmp_path):
    """A LongRoPE genai package (tiny Phi-4-mini, switch at 32, from genai's builder): the switch is read from the
    graph, and every token of a reply that crosses it is the argmax of a fresh run of its whole prefix (what the
    recompute guarantees), where genai's own Generator keeps the keys it rotated with the short tables."""
    import numpy as np
    import onnxruntime as ort

    import runtime
    from runtime.engine import EngineOptions
    from runtime.loop import GenerationConfig
    from runtime.sampling import SamplingConfig
    from tests.phi3_fixtures import make_checkpoint

    def sharpen(model):  # peaked attention: keys rotated with the wrong tables change the greedy tokens
        for layer in model.model.layers:
            layer.self_attn.qkv_proj.weight.mul_(6.0)

    make_checkpoint("tiny-phi-4-mini", tmp_path / "ckpt", "gpt4o", seed=4, edit=sharpen)
    out = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(tmp_path / "ckpt"),
                          "-m", "tiny", "-o", str(tmp_path / "pkg"), "-p", "fp32", "-e", "cpu", "-c",
                          str(tmp_path / "cache")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    model = runtime.load(tmp_path / "pkg", EngineOptions(threads=1))
    assert model.manifest.rope_switch == 32
    ids = model.encode("def add(a, b):")
    got = model.generate_ids(ids, GenerationConfig(max_new_tokens=32, stop_at_eos=False,
                                                   sampling=SamplingConfig(temperature=0))).tokens
    assert len(ids) < 32 < len(ids) + len(got)
    session = ort.InferenceSession(str(tmp_path / "pkg" / "model.onnx"))
    c = model.manifest.contract
    never = np.flatnonzero(model.suppress) if model.suppress is not None else []
    for k in range(len(ids), len(ids) + len(got)):
        seq = (ids + got)[:k]
        feeds = {"input_ids": np.array([seq], np.int64), "attention_mask": np.ones((1, k), np.int64)}
        feeds.update({f"past_key_values.{layer}.{kind}": np.zeros((1, c.kv_heads, 0, c.head_dim), np.float32)
                      for layer in range(c.n_layers) for kind in ("key", "value")})
        logits = session.run(["logits"], feeds)[0][0, -1]
        logits[never] = -np.inf
        assert int(logits.argmax()) == got[k - len(ids)], k
