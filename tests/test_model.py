"""The PyTorch phi against transformers' PhiForCausalLM, and cached decoding against full forward."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import hf_reference, ours_from_reference
from train.config import preset
from train.model import PhiForCausalLM, greedy_generate

SHAPES = ["tiny-phi-1_5", "tiny-phi-2"]


@pytest.mark.parametrize("name", SHAPES)
def test_logits_match_transformers(name):
    config = preset(name)
    reference = hf_reference(config)
    ours = ours_from_reference(reference, config)
    ids = torch.randint(0, config.vocab_size, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(ids).logits
        got = ours(ids)
    assert got.shape == (2, 37, config.vocab_size)
    diff = (got - want).abs().max().item()
    print(f"{name}: max |ours - transformers| = {diff:.2e}")
    assert diff <= 1e-5


def test_tied_embeddings_match_transformers():
    config = preset("tiny-phi-1_5").replace(tie_word_embeddings=True)
    reference = hf_reference(config)
    ours = ours_from_reference(reference, config)
    assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()
    ids = torch.arange(20).unsqueeze(0)
    with torch.no_grad():
        assert (ours(ids) - reference(ids).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("name", SHAPES)
def test_cached_decoding_equals_full_forward(name):
    config = preset(name)
    torch.manual_seed(0)
    model = PhiForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, 24))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1, 32)
        pieces = [model(ids[:, :9], cache), model(ids[:, 9:14], cache)]  # prefill, then a chunk
        pieces += [model(ids[:, t:t + 1], cache) for t in range(14, 24)]  # then one token at a time
    cached = torch.cat(pieces, dim=1)
    assert cache.length == 24
    assert (cached - full).abs().max() <= 1e-5


def test_gqa_cached_decoding_equals_full_forward():
    config = preset("tiny-phi-1_5").replace(n_kv_heads=2)
    model = PhiForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, 12))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1, 16)
        cached = torch.cat([model(ids[:, :5], cache)] + [model(ids[:, t:t + 1], cache) for t in range(5, 12)], 1)
    assert (cached - full).abs().max() <= 1e-5


def test_greedy_generation_matches_transformers():
    config = preset("tiny-phi-2")
    reference = hf_reference(config, seed=3)
    ours = ours_from_reference(reference, config)
    prompt = [5, 17, 99, 3]
    want = reference.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert greedy_generate(ours, prompt, 16) == want


def test_context_overflow_is_a_clear_error():
    config = preset("tiny-phi-1_5")
    model = PhiForCausalLM(config).eval()
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, config.max_position_embeddings + 1, dtype=torch.long))
    cache = model.new_cache(1, 8)
    with pytest.raises(ValueError, match="KV cache"):
        model(torch.zeros(1, 9, dtype=torch.long), cache)


def test_attention_backend_choice():
    from train.attention import select_backend

    q = torch.zeros(1, 1, 1, 8)
    assert select_backend("auto", q) == "sdpa"
    with pytest.raises(ValueError, match="flash"):
        select_backend("flash", q)  # CPU fp32: flash-attn cannot run here
    with pytest.raises(ValueError, match="unknown attention backend"):
        select_backend("xformers", q)
