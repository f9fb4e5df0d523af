"""Phi-3 family packages in the runtime: the checkpoint's chat template rendered as transformers'
apply_chat_template renders it, every stop id, UTF-8-safe streaming with byte-fallback and byte-level
tokenizers, and python -m runtime.generate --template chat giving transformers' greedy tokens (issue 11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import runtime
from export.options import ExportOptions
from export.package import export_package
from runtime.engine import EngineOptions
from runtime.loop import GenerationConfig, generate_ids
from runtime.pipeline import apply_template
from runtime.sampling import SamplingConfig
from runtime.text import REPLACEMENT, TextStream
from tests.phi3_fixtures import KINDS, CancelAfter, make_checkpoint
from tests.test_runtime import ScriptedBackend

ROOT = Path(__file__).resolve().parents[1]
CASES = [("llama", "tiny-phi-3"), ("gpt4o", "tiny-phi-4-mini")]


@pytest.fixture(scope="module", params=CASES, ids=[k for k, _ in CASES])
def case(request, tmp_path_factory):
    """(kind, transformers model, special ids, checkpoint, fp32 package)."""
    kind, name = request.param
    folder = tmp_path_factory.mktemp(kind)
    model, ids = make_checkpoint(name, folder / "ckpt", kind, seed=4)
    package = export_package(folder / "ckpt", folder / "pkg", ExportOptions(precision="fp32"), show_progress=False)
    return kind, model, ids, folder / "ckpt", package


def hf_tokenizer(checkpoint: Path):
    import transformers

    config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(checkpoint / "tokenizer.json"),
                                                chat_template=config["chat_template"],
                                                eos_token=config["eos_token"], bos_token=config["bos_token"])


CONVERSATIONS = [
    (None, [], "Hello!"),
    (None, [("Hello!", "Hi, how can I help?")], "What is 2 + 2?"),
    ("You are terse.", [], "Name a prime."),
    ("You are terse.", [("Name a prime.", "7"), ("Another?", "11")], "And {prompt} in braces?"),
]


@pytest.mark.parametrize("system, turns, user", CONVERSATIONS)
def test_chat_prompts_equal_apply_chat_template(case, system, turns, user):
    kind, _, _, checkpoint, package = case
    manifest = runtime.load(package, EngineOptions(threads=1)).manifest
    text = apply_template(manifest, "chat", turns[0][0] if turns else user, system=system)
    for i, (_, reply) in enumerate(turns):
        text += reply + apply_template(manifest, "chat", turns[i + 1][0] if i + 1 < len(turns) else user, "turn")
    messages = [{"role": "system", "content": system}] if system else []
    for u, a in turns:
        messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": user})
    want = hf_tokenizer(checkpoint).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == want, kind


def test_every_stop_id_is_in_the_manifest_and_ends_generation(case):
    kind, _, ids, _, package = case
    model = runtime.load(package, EngineOptions(threads=1))
    assert model.stop_token_ids == (ids["<|endoftext|>"], ids["<|end|>"])
    for stop in model.stop_token_ids:
        out = generate_ids(ScriptedBackend([5, 6, stop, 7], vocab=512), [1, 2],
                           GenerationConfig(10, SamplingConfig(temperature=0)), eos_token_id=model.stop_token_ids)
        assert out.finish_reason == "eos" and out.tokens == [5, 6, stop]


TEXTS = ["héllo wörld", "emoji 😀 and 🎉 done", "中文字符 and ελληνικά", "mixed ünïcödé 🙂\n\tend"]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_streaming_never_shows_half_characters(kind, tmp_path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(KINDS[kind][0](tmp_path / "tokenizer.json")))
    for text in TEXTS:
        ids = tok.encode(text).ids
        assert any(tok.id_to_token(i).startswith("<0x") for i in ids) or kind == "gpt4o"  # byte pieces in play
        stream = TextStream(lambda x: tok.decode(list(x)))
        pieces = [stream.push(i) for i in ids] + [stream.flush()]
        assert "".join(pieces) == tok.decode(ids), (kind, text)
        assert not any(REPLACEMENT in p for p in pieces), (kind, text, pieces)


def test_generate_cli_with_the_chat_template_equals_transformers(case):
    kind, model, _, checkpoint, package = case
    prompt = "Write a haiku about the sea."
    hf = hf_tokenizer(checkpoint)
    text = hf.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    want_ids = hf(text, add_special_tokens=False)["input_ids"]  # as apply_chat_template(tokenize=True) does
    new = 48 - len(want_ids)  # the reply crosses LongRoPE's switch at 32
    padded = list(range(len(hf), 512))  # rows with no token: the runtime never samples them (nor does this)
    with torch.no_grad():
        want = model.generate(torch.tensor([want_ids]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                              eos_token_id=None, pad_token_id=0, suppress_tokens=padded)[0, len(want_ids):].tolist()
    proc = subprocess.run([sys.executable, "-m", "runtime.generate", prompt, "--model", str(package), "--template",
                           "chat", "--temperature", "0", "--max-new-tokens", str(new), "--ignore-eos", "--json",
                           "--threads", "1"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    generator = runtime.load(package, EngineOptions(threads=1))
    assert generator.encode(apply_template(generator.manifest, "chat", prompt)) == want_ids, kind
    assert out["tokens"] == want, kind


def test_truncating_back_across_the_switch_restores_a_fresh_computation(case):
    """Keys recomputed with the long tables must not survive a truncation back below the switch (issue 21.3)."""
    _, _, _, _, package = case
    model = runtime.load(package, EngineOptions(threads=1))
    backend, switch = model.backend, model.manifest.rope_switch
    assert switch == 32
    ids = [(7 * i + 3) % 400 + 20 for i in range(60)]
    backend.truncate(0)
    backend.step(ids[:20])
    backend.step(ids[20:40])  # crosses: the whole sequence is fed again with the long tables
    backend.truncate(25)  # back below the switch
    got = backend.step(ids[25:30])
    backend.truncate(0)
    want = backend.step(ids[:30])  # a fresh computation of the same 30 tokens
    np.testing.assert_allclose(got, want, atol=1e-5)
    backend.step(ids[30:40])  # long again; back to 31, then a step to 45 that crosses once more
    backend.truncate(31)
    got = backend.step(ids[31:45])
    backend.truncate(0)
    np.testing.assert_allclose(got, backend.step(ids[:45]), atol=1e-5)


@pytest.fixture(scope="module")
def sharp_package(tmp_path_factory):
    """A tiny Phi-4-mini package whose attention is peaked (q, k, v scaled by 6), so that keys rotated with the
    wrong LongRoPE tables change its greedy tokens."""
    def sharpen(model):
        for layer in model.model.layers:
            layer.self_attn.qkv_proj.weight.mul_(6.0)

    folder = tmp_path_factory.mktemp("sharp")
    make_checkpoint("tiny-phi-4-mini", folder / "ckpt", "gpt4o", seed=4, edit=sharpen)
    return export_package(folder / "ckpt", folder / "pkg", ExportOptions(precision="fp32"), show_progress=False)


def test_a_cancelled_chat_turn_past_the_switch_leaves_no_trace(sharp_package):
    package = sharp_package
    greedy = GenerationConfig(max_new_tokens=12, sampling=SamplingConfig(temperature=0), stop_at_eos=False)
    model = runtime.load(package, EngineOptions(threads=1))
    chat = model.chat("chat")
    first = chat.send("Hi", greedy)
    assert model.backend.length < 32
    long = GenerationConfig(max_new_tokens=40, sampling=SamplingConfig(temperature=0), stop_at_eos=False)
    out = chat.send("Tell me a long story about the sea.", long, cancel=CancelAfter(30))
    assert out.finish_reason == "cancelled" and len(chat.tokens) < 32
    third = chat.send("And then?", greedy)
    fresh = runtime.load(package, EngineOptions(threads=1)).chat("chat")
    assert fresh.send("Hi", greedy).tokens == first.tokens
    assert fresh.send("And then?", greedy).tokens == third.tokens
