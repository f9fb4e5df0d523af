"""export/ and the checkpoint reader on what published and hostile checkpoints bring (issue 21 F, G, I, J, N): older
rope spellings, weights that are not floats, chat templates that depend on the message text or never finish,
config.json values that would allocate without end. Each is honoured exactly or refused in one line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import runtime
from export.options import ExportOptions
from export.package import export_package
from runtime.engine import EngineOptions
from runtime.pipeline import apply_template
from tests.conftest import hf_reference, ours_from_reference
from tests.test_export import IDS, run_steps, torch_steps
from tests.test_export_safety import _copy_checkpoint, _one_line_error, _run_cli, ckpt, tok  # noqa: F401
from tests.phi3_fixtures import PHI3_CHAT_TEMPLATE
from train import load_pretrained, save_pretrained
from train.config import preset

FP32 = ExportOptions(precision="fp32", kv_dtype=None)


# ---------------------------------------------------------------- F. rope scaling


def test_linear_rope_scaling_equals_transformers_in_pytorch_and_onnx(tok, tmp_path):
    """phi's older `rope_scaling: {"type": "linear", "factor": 4}` is honoured: logits equal transformers'
    (which interpolates positions by the factor) in PyTorch and through the exported package's KV cache."""
    config = preset("tiny-phi-1_5").replace(rope_linear_factor=4.0)
    reference = hf_reference(config)
    folder = tmp_path / "ckpt"
    save_pretrained(ours_from_reference(reference, config), folder, tokenizer=tok)
    saved = json.loads((folder / "config.json").read_text())
    del saved["rope_parameters"]  # as a transformers-4 checkpoint writes it
    saved["rope_scaling"] = {"type": "linear", "factor": 4}
    (folder / "config.json").write_text(json.dumps(saved))
    model = load_pretrained(folder)
    ids = torch.tensor([IDS])
    with torch.no_grad():
        want = reference(ids).logits
        unscaled = hf_reference(preset("tiny-phi-1_5"))(ids).logits
        assert (model(ids) - want).abs().max().item() <= 1e-5
        assert (unscaled - want).abs().max().item() > 1e-3  # the scaling matters for these logits
    package = export_package(folder, tmp_path / "pkg", FP32, show_progress=False)
    assert runtime.load(package, EngineOptions(threads=1)).manifest.model["rope_parameters"]["factor"] == 4
    assert np.abs(run_steps(package, IDS, 12) - torch_steps(model, IDS, 12)).max() <= 1e-4


@pytest.mark.parametrize("scaling, expect", [
    ({"type": "dynamic", "factor": 2.0}, "rope type 'dynamic' (dynamic NTK scaling"),
    ({"rope_type": "yarn", "factor": 2.0}, "rope type 'yarn' (YaRN)"),
    ({"rope_type": "llama3", "factor": 8.0}, "rope type 'llama3'"),
    ({"type": "linear"}, "needs a numeric 'factor'"),
])
def test_rope_types_phi_does_not_implement_are_refused_by_name(ckpt, tmp_path, scaling, expect):
    def edit(config):
        config.pop("rope_parameters", None)
        config["rope_scaling"] = scaling

    _one_line_error(_run_cli(_copy_checkpoint(ckpt, tmp_path / "c", edit), tmp_path / "pkg"), expect)


def test_phi3_yarn_without_factors_is_named_as_yarn(tmp_path):
    from train.config import config_from_hf_dict

    d = preset("tiny-phi-3").to_hf_dict()
    d.pop("rope_parameters")
    d["rope_scaling"] = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    with pytest.raises(ValueError, match="is YaRN .factor, beta_fast, beta_slow., which no phi-3 model uses"):
        config_from_hf_dict(d)
    d["rope_scaling"] = {"type": "linear", "factor": 4.0}
    with pytest.raises(ValueError, match="phi-3 uses the default rotary embedding or LongRoPE"):
        config_from_hf_dict(d)


# ---------------------------------------------------------------- G. weights that are not floats


@pytest.mark.parametrize("dtype, name", [(torch.int32, "I32"), (torch.bool, "BOOL"), (torch.float8_e4m3fn, "F8_E4M3"),
                                         (torch.int8, "I8")])
def test_integer_bool_and_float8_weights_are_refused_by_name(ckpt, tmp_path, dtype, name):
    def edit(tensors):
        key = "model.layers.0.mlp.fc1.weight"
        tensors[key] = tensors[key].to(dtype)

    _one_line_error(_run_cli(_copy_checkpoint(ckpt, tmp_path / "c", tensor_edit=edit), tmp_path / "pkg"),
                    f"tensor 'model.layers.0.mlp.fc1.weight' of {tmp_path / 'c'} is {name}")


def test_float64_weights_are_converted_and_said(ckpt, tmp_path):
    def edit(tensors):
        for key in list(tensors):
            tensors[key] = tensors[key].double()

    folder = _copy_checkpoint(ckpt, tmp_path / "c", tensor_edit=edit)
    proc = _run_cli(folder, tmp_path / "pkg")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("stores float64 weights") == 1  # said once
    a, b = load_pretrained(ckpt), load_pretrained(folder)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


# ---------------------------------------------------------------- N. config.json values that would allocate without end


@pytest.mark.parametrize("field, value, expect", [
    ("num_hidden_layers", 10**9, "config.json says 1000000000 layers (num_hidden_layers) but the weights"),
    ("num_hidden_layers", 1, "says 1 layers"),
    ("num_attention_heads", 0, "num_attention_heads must be a positive integer"),
    ("max_position_embeddings", 10**12, "max_position_embeddings must be at most"),
])
def test_config_values_are_checked_before_anything_is_sized_by_them(ckpt, tmp_path, field, value, expect):
    def edit(config):
        config[field] = value

    start = time.monotonic()
    _one_line_error(_run_cli(_copy_checkpoint(ckpt, tmp_path / "c", edit), tmp_path / "pkg"), expect)
    assert time.monotonic() - start < 60


# ---------------------------------------------------------------- I, J. chat templates


PHI35 = PHI3_CHAT_TEMPLATE.replace("message['role'] == 'system' %}",
                                   "message['role'] == 'system' and message['content'] %}")
TRIMS = ("{% for m in messages %}{% if m['role'] == 'system' %}<|system|>{{ m['content'] | trim }}<|end|>{% elif "
         "m['role'] == 'user' %}<|user|>{{ m['content'] | trim }}<|end|>{% else %}<|assistant|>{{ m['content'] }}"
         "<|end|>{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _with_template(ckpt: Path, folder: Path, template) -> Path:
    folder = _copy_checkpoint(ckpt, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "<|endoftext|>",
                                                              "bos_token": "<|endoftext|>"}))
    return folder


@pytest.mark.parametrize("template, flag", [(PHI35, "omit_empty_system"), (TRIMS, "trim")])
def test_text_dependent_templates_render_as_apply_chat_template(ckpt, tmp_path, template, flag):
    """Phi-3.5's "system only if it has content" and `| trim` are kept as flags, and the runtime's prompts equal
    transformers' apply_chat_template on whitespace, an empty system message and braces."""
    import transformers

    folder = _with_template(ckpt, tmp_path / "c", template)
    package = export_package(folder, tmp_path / "pkg", FP32, show_progress=False)
    manifest = runtime.load(package, EngineOptions(threads=1)).manifest
    assert manifest.templates["chat"].get(flag) is True
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), chat_template=template)
    for system, turns, user in [("", [], "Hi"), (" \u3000be brief\n", [(" a ", " b ")], "\xa0{prompt} c\t"),
                                (None, [("x", "y"), ("\n z", "w ")], "  ")]:
        text = apply_template(manifest, "chat", turns[0][0] if turns else user, system=system)
        for i, (_, reply) in enumerate(turns):
            text += reply + apply_template(manifest, "chat", turns[i + 1][0] if i + 1 < len(turns) else user, "turn")
        messages = [{"role": "system", "content": system}] if system is not None else []
        for u, a in turns:
            messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        want = hf.apply_chat_template(messages + [{"role": "user", "content": user}], tokenize=False,
                                      add_generation_prompt=True)
        assert text == want, (system, turns, user)


@pytest.mark.parametrize("template, reason", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "takes more than 10 s"),
    ("{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}", "writes more than 1048576 characters"),
    ("{% include 'other.jinja' %}", "rendering it fails"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{% for %}", "TemplateSyntaxError"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recurses without end"),
    ("{% set x = 'x' * 10**10 %}{{ x }}", "rendering it"),  # a string of 10 GB: the memory limit
    ("{% for m in messages %}{% if m['role'] == 'user' %}{% if m['content'] | length > 20 %}LONG{% endif %}<u>"
     "{{ m['content'] }}</u>{% else %}<a>{{ m['content'] }}</a>{% endif %}{% endfor %}"
     "{% if add_generation_prompt %}<a>{% endif %}", "depends on more of the message text"),
    ([{"name": "tool_use", "template": PHI3_CHAT_TEMPLATE}], "has no template named 'default'"),
    ("{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ 'padding ' * 200 }}{{ m['content'] }}{% else %}"
     "<|assistant|>{{ m['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
     "as many as the package's context"),
])
def test_templates_that_cannot_be_used_leave_the_package_without_chat(ckpt, tmp_path, template, reason):
    """One rule for every way a template fails: the package is written, without "chat", and one line says why;
    the export never hangs (the rendering runs in a child with a deadline and a memory limit)."""
    folder = _with_template(ckpt, tmp_path / "c", template)
    start = time.monotonic()
    proc = _run_cli(folder, tmp_path / "pkg", "--max-length", "128")
    assert time.monotonic() - start < 60
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and reason in warnings[0] and "has no 'chat' template" in warnings[0], proc.stderr
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    assert "chat" not in manifest["templates"] and (tmp_path / "pkg" / "manifest.json").stat().st_size < 100_000
