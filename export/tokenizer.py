"""The package's tokenizer, checked against the model before anything is written, and its special ids.

Published checkpoints do not always name their end-of-text token: microsoft/phi-1 and phi-1_5 ship
`"eos_token_id": null` and `"bos_token_id": null` in config.json. A package without an end-of-text id never
stops at `<|endoftext|>` (the runtime skips it as a special token and runs on into an unrelated document), so
a missing id is taken from the tokenizer and a package with none at all is refused unless asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# End-of-text tokens of the phi tokenizers, in order of preference: CodeGen / GPT-2 (phi-1, 1.5, 2) and the
# phi-3 family's document end.
EOS_TOKENS = ("<|endoftext|>",)
# Tokens that end a reply: every one the tokenizer has is a stop id of the package (phi-3 and Phi-4-mini end a
# turn with <|end|>, Phi-4 with <|im_end|>), with the ids config.json and generation_config.json list.
STOP_TOKENS = ("<|endoftext|>", "<|end|>", "<|im_end|>")


@dataclass(frozen=True)
class TokenizerInfo:
    path: Path
    size: int  # 1 + the largest token id, added tokens included
    bos_token_id: int | None
    eos_token_id: int | None
    stop_token_ids: tuple[int, ...] = ()  # every id that ends generation, eos_token_id first


def listed_eos_ids(checkpoint: Path) -> list[int]:
    """The eos ids config.json and generation_config.json list (either may hold an int or a list)."""
    ids: list[int] = []
    for name in ("config.json", "generation_config.json"):
        try:
            value = json.loads((Path(checkpoint) / name).read_text(encoding="utf-8-sig")).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and not isinstance(v, bool):
                ids.append(v)
    return ids


def check_tokenizer(path: Path, vocab_size: int, bos_token_id: int | None, eos_token_id: int | None,
                    allow_no_eos: bool = False, listed_eos: list[int] = ()) -> TokenizerInfo:
    """Reads `path` as a Hugging Face tokenizer.json for a model with `vocab_size` embedding rows; ids the
    config leaves out are taken from the tokenizer's end-of-text token. Raises ValueError naming the fix."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path} does not exist; pass --tokenizer FILE (a tokenizer.json)")
    try:
        json.loads(path.read_text(encoding="utf-8"))
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # OSError, UnicodeDecodeError, JSONDecodeError, and the bare Exception of tokenizers
        reason = " ".join(str(e).split())[:120]
        raise ValueError(f"{path} is not a Hugging Face tokenizer.json ({reason}); pass the tokenizer.json that "
                         f"was trained with this model via --tokenizer") from None
    ids = tokenizer.get_vocab(with_added_tokens=True).values()
    size = max(ids, default=-1) + 1
    if size == 0:
        raise ValueError(f"tokenizer {path} has no tokens; pass the tokenizer.json of this model")
    if size > vocab_size:
        raise ValueError(f"tokenizer {path} has token ids up to {size - 1} but the model's embedding has only "
                         f"{vocab_size} rows; this tokenizer belongs to another model, pass the right one with "
                         f"--tokenizer")
    named = next((tokenizer.token_to_id(t) for t in EOS_TOKENS if tokenizer.token_to_id(t) is not None), None)
    eos = eos_token_id if eos_token_id is not None else named
    bos = bos_token_id if bos_token_id is not None else named
    for what, value in (("eos_token_id", eos), ("bos_token_id", bos)):
        if value is not None and tokenizer.id_to_token(value) is None:
            raise ValueError(f"config.json's {what} {value} is not a token of {path}; fix config.json or pass "
                             f"the model's own tokenizer with --tokenizer")
    if eos is None and not allow_no_eos:
        raise ValueError(f"neither config.json nor {path} names an end-of-text token (config eos_token_id is null "
                         f"and the tokenizer has no {' or '.join(EOS_TOKENS)}), so generation would never stop on "
                         f"its own; set eos_token_id in config.json, or pass --no-eos to export such a package")
    named_stops = [tokenizer.token_to_id(t) for t in STOP_TOKENS]
    stops = [i for i in (eos, *listed_eos, *named_stops) if i is not None]
    for value in listed_eos:
        if tokenizer.id_to_token(value) is None:
            raise ValueError(f"the checkpoint lists eos id {value}, which is not a token of {path}; fix "
                             f"config.json / generation_config.json or pass the model's own tokenizer")
    return TokenizerInfo(path, size, bos, eos, tuple(dict.fromkeys(stops)))
