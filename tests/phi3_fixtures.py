"""Tiny phi-3 family checkpoints as published ones are laid out: random transformers weights, and the two
tokenizer kinds with their tokenizer_config.json chat templates and generation_config.json eos lists.

- "llama": Phi-3 / Phi-3.5's Llama-2-style SentencePiece BPE as tokenizer.json (normalizer that prepends and
  replaces "▁", no pre-tokenizer, byte fallback to <0x00>..<0xFF>, decoder Replace/ByteFallback/Fuse/Strip),
  with Phi-3's added tokens and chat template (newlines after each tag).
- "gpt4o": Phi-4-mini's byte-level BPE with a Split pre-tokenizer on GPT-4o's Unicode-class regex, with
  Phi-4-mini's chat template (no newlines).
Both are trained here on argparse's source (a few hundred tokens), so they fit the tiny presets' 512 rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# The chat templates as the published tokenizer_config.json files carry them.
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
PHI4_MINI_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and message['tools'] "
    "is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + "
    "'<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}")
GPT4O_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PHI3_ADDED = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
              "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]
PHI4_ADDED = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool|>", "<|/tool|>"]


def _corpus() -> list[str]:
    return Path(argparse.__file__).read_text().splitlines()


def llama_tokenizer(path: Path) -> Path:
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)  # training
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=420, special_tokens=specials,
                                                           show_progress=False))
    tok.pre_tokenizer = None  # as Llama 2's tokenizer.json: the normalizer does all of it
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in PHI3_ADDED])
    tok.save(str(path))
    return path


def gpt4o_tokenizer(path: Path) -> Path:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4O_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=480, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in PHI4_ADDED])
    tok.save(str(path))
    return path


KINDS = {"llama": (llama_tokenizer, PHI3_CHAT_TEMPLATE, "<s>"), "gpt4o": (gpt4o_tokenizer, PHI4_MINI_CHAT_TEMPLATE,
                                                                        "<|endoftext|>")}


def write_tokenizer_files(folder: Path, kind: str) -> dict[str, int]:
    """tokenizer.json, tokenizer_config.json (chat template) and generation_config.json (eos list) in `folder`;
    returns the special ids."""
    from tokenizers import Tokenizer

    build, template, bos = KINDS[kind]
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(str(build(folder / "tokenizer.json")))
    ids = {t: tok.token_to_id(t) for t in ("<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", bos)}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": template, "bos_token": bos, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "model_max_length": 128}))
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": ids[bos], "eos_token_id": [ids["<|endoftext|>"], ids["<|end|>"]]}))
    return ids


def make_checkpoint(name: str, folder: Path, kind: str, seed: int = 0, edit=None, **changes):
    """(transformers model, special ids): a tiny `name` preset (with `changes` to its fields) saved by transformers
    with the `kind` tokenizer files beside it; `edit(state_dict)` may change weights before saving."""
    import torch

    from tests.test_phi3 import hf_phi3
    from train.config import preset

    ids = write_tokenizer_files(folder, kind)
    config = preset(name).replace(eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                                  bos_token_id=None, **changes)
    model = hf_phi3(config, seed)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    model.save_pretrained(folder)
    return model, ids


class CancelAfter:
    """A cancel token set from its k-th check on (the loop checks it once per prefill chunk and per token): a Stop
    that lands at a known point of a generation (tests and android_demo/make_golden.py's goldens)."""

    def __init__(self, k: int):
        self.k, self.calls = k, 0

    def is_set(self) -> bool:
        self.calls += 1
        return self.calls > self.k
