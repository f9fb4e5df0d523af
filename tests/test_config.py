"""PhiConfig validation, the preset table and Hugging Face config.json both ways."""

from __future__ import annotations

import json

import pytest

from train.config import PRESETS, PhiConfig, preset


def test_published_presets_and_derived_values():
    phi2 = preset("phi-2")
    assert (phi2.head_dim, phi2.rotary_dim, phi2.partial_rotary_factor) == (80, 32, 0.4)
    phi15 = preset("phi-1_5")
    assert (phi15.n_layers, phi15.n_heads, phi15.head_dim, phi15.rotary_dim) == (24, 32, 64, 32)
    assert 1.35e9 < phi15.num_parameters() < 1.45e9  # phi-1.5 is "1.3 B" (1.42 B with the 51200-row head)
    assert 2.7e9 < phi2.num_parameters() < 2.8e9


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_hf_config_round_trip_through_transformers(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    from train.config import load_config

    config = preset(name)
    config.save(tmp_path / "config.json")
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(hf).__name__ == {"phi": "PhiConfig", "phi3": "Phi3Config"}[config.model_type]
    assert hf.hidden_size == config.hidden_size and hf.num_hidden_layers == config.n_layers
    head_dim = hf.hidden_size // hf.num_attention_heads
    assert int(head_dim * hf.rope_parameters["partial_rotary_factor"]) == config.rotary_dim
    hf.save_pretrained(tmp_path / "hf")
    assert load_config(tmp_path / "hf" / "config.json") == config


def test_older_config_layouts():
    msft = {"model_type": "phi-msft", "n_embd": 2560, "n_head": 32, "n_layer": 32, "n_inner": None,
            "n_positions": 2048, "rotary_dim": 32, "vocab_size": 51200, "layer_norm_epsilon": 1e-5,
            "activation_function": "gelu_new", "tie_word_embeddings": False}
    assert PhiConfig.from_hf_dict(msft) == preset("phi-2").replace(bos_token_id=None, eos_token_id=None)
    mix = dict(msft, model_type="mixformer-sequential", n_embd=2048, n_layer=24)
    assert PhiConfig.from_hf_dict(mix).intermediate_size == 8192


@pytest.mark.parametrize("changes, field", [
    ({"rotary_dim": 96}, "rotary_dim"),
    ({"rotary_dim": 7}, "rotary_dim"),
    ({"head_dim": 32}, "head_dim"),
    ({"n_layers": 0}, "n_layers"),
    ({"n_kv_heads": 3}, "n_kv_heads"),
    ({"eos_token_id": 99999}, "eos_token_id"),
])
def test_invalid_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        preset("phi-1_5").replace(**changes)


def test_bad_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        PhiConfig.load(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama'"):
        PhiConfig.load(tmp_path / "config.json")
    d = preset("tiny-phi-1_5").to_hf_dict()
    d["rope_parameters"]["partial_rotary_factor"] = 2.0
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="rotary_dim .* larger than head_dim"):
        PhiConfig.load(tmp_path / "config.json")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("phi-3")
