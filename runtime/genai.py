"""onnxruntime-genai packages read as ours: genai_config.json + model.onnx(.data) + tokenizer files -> a Manifest.

Microsoft publishes the phi-3 family as genai packages (microsoft/Phi-3-mini-4k-instruct-onnx's
cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4 and the like), and onnxruntime-genai's builder writes them. Their
decoder graph speaks our I/O contract (runtime/contract.py) with other words for a few things, mapped here once:

    genai_config.json                           our manifest
    model.decoder.inputs / outputs names        must be the contract's (input_ids, attention_mask,
                                                past_key_values.%d.key, present.%d.key, logits); any other input
                                                (position_ids, ...) is refused
    the graph's past dtype                      io.kv_cache dtype (float32 / float16)
    logits for every position (no logits_to_keep)   logits "all"
    model.context_length, the rotary tables     max_length (the smaller)
    model.eos_token_id (one or a list)          stop_token_ids
    tokenizer_config.json's chat template       the "chat" template (export/chat_template.py, Jinja's sandbox)
    search.do_sample, temperature, top_k, top_p, repetition_penalty
                                                the CLI's sampling defaults for this package (Manifest.sampling)
    search.past_present_share_buffer           nothing to do: our engine always shares one buffer

    the graph's If(Greater(length, c)) over two rotary tables (LongRoPE)   rope_switch = c: our runtime feeds the
                                                whole sequence again when it grows past it, as transformers does
                                                (genai's Generator keeps the keys rotated with the short tables)

Refused in one line each: a vision, speech or embedding model, a package built for another execution provider, other
branching in the graph, another model file name, a quantized KV cache.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .contract import Contract, past_name, present_name
from .graphinfo import graph_io
from .manifest import MODEL, TEMPLATES, TOKENIZER, Manifest

GENAI_CONFIG = "genai_config.json"
TEXT_TYPES = ("phi", "phi3")  # decoder-only text phi models whose graphs our contract fits
OTHER_PARTS = ("vision", "speech", "embedding", "encoder")


def is_genai(folder: Path) -> bool:
    return (Path(folder) / GENAI_CONFIG).is_file() and not (Path(folder) / "manifest.json").is_file()


def genai_manifest(folder: Path) -> Manifest:
    """The Manifest our runtime needs for the genai package in `folder` (module docstring), or a ValueError naming
    what it cannot run."""
    folder = Path(folder)
    path = folder / GENAI_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8-sig"))
        model, decoder = config["model"], config["model"]["decoder"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not an onnxruntime-genai config ({e!r}); download the package again") from None
    kind = model.get("type")
    parts = [p for p in OTHER_PARTS if p in model]
    if parts or kind not in TEXT_TYPES:
        raise ValueError(f"{folder} is an onnxruntime-genai {kind} package{' with a ' + parts[0] + ' model' if parts else ''}; "
                         f"this runtime runs the text-only phi ones ({', '.join(TEXT_TYPES)})")
    providers = [next(iter(p)) for p in decoder.get("session_options", {}).get("provider_options", []) if p]
    if any(p != "cpu" for p in providers):
        raise ValueError(f"{folder} is built for {', '.join(providers)}; take the package's CPU variant "
                         f"(cpu_and_mobile/...)")
    if decoder.get("filename", MODEL) != MODEL:
        raise ValueError(f"{folder}'s decoder is {decoder.get('filename')!r}; this runtime reads {MODEL}")
    io = graph_io(folder / MODEL)
    names = {**decoder.get("inputs", {}), **decoder.get("outputs", {})}
    ours = {"input_ids": "input_ids", "attention_mask": "attention_mask", "logits": "logits",
            "past_key_names": past_name("%d", "key"), "past_value_names": past_name("%d", "value"),
            "present_key_names": present_name("%d", "key"), "present_value_names": present_name("%d", "value")}
    different = {k: v for k, v in names.items() if k in ours and v != ours[k]}
    if different:
        raise ValueError(f"{folder}'s graph names its inputs and outputs {different}, not as our contract does; "
                         f"this runtime cannot map them yet")
    n_layers = int(decoder["num_hidden_layers"])
    expected = {"input_ids", "attention_mask"} | {past_name(i, k) for i in range(n_layers) for k in ("key", "value")}
    extra = sorted(set(io.inputs) - expected)
    if extra:
        raise ValueError(f"{folder}'s graph takes {', '.join(extra)}, which our contract does not feed; this runtime "
                         f"cannot run it")
    kv_dtype = io.inputs.get(past_name(0, "key"))
    if kv_dtype not in ("float32", "float16"):
        raise ValueError(f"{folder}'s KV cache is {kv_dtype}; this runtime runs genai packages with a float cache")
    if "If" in io.op_types and io.rope_switch is None:
        raise ValueError(f"{folder} branches in its graph in a way this runtime cannot read (not LongRoPE's "
                         f"Greater(length, switch) over two rotary tables); it cannot run it")
    contract = Contract(n_layers=n_layers, kv_heads=int(decoder["num_key_value_heads"]),
                        head_dim=int(decoder["head_size"]), vocab_size=int(model["vocab_size"]), kv_dtype=kv_dtype,
                        logits="all", logits_to_keep=False)
    rows = io.rotary_rows  # None behind an If
    max_length = min([int(model["context_length"])] + ([rows] if rows else []))
    switch = io.rope_switch if io.rope_switch is not None and io.rope_switch < max_length else None
    eos = model.get("eos_token_id")
    stops = [int(i) for i in (eos if isinstance(eos, list) else [] if eos is None else [eos])]
    files = {name: {"sha256": "", "bytes": (folder / name).stat().st_size}
             for name in (MODEL, MODEL + ".data") if (folder / name).is_file()}
    if not (folder / TOKENIZER).is_file():
        raise FileNotFoundError(f"{folder} has no {TOKENIZER}; download the whole package folder")
    hf_model = {"model_type": kind, "vocab_size": contract.vocab_size, "hidden_size": decoder.get("hidden_size"),
                "num_attention_heads": decoder.get("num_attention_heads"), "num_key_value_heads": contract.kv_heads,
                "num_hidden_layers": n_layers, "max_position_embeddings": model["context_length"],
                "bos_token_id": model.get("bos_token_id"), "eos_token_id": stops[0] if stops else None}
    return Manifest(folder=folder, model=hf_model, contract=contract, max_length=max_length,
                    quantization={"source": "onnxruntime-genai package", "kv_cache": {"dtype": kv_dtype}},
                    tokenizer={"file": TOKENIZER, "bos_token_id": model.get("bos_token_id"),
                               "eos_token_id": stops[0] if stops else None, "stop_token_ids": stops},
                    templates=_templates(folder, max_length), files=files,
                    export={"source": "onnxruntime-genai", "search": config.get("search", {})},
                    rope_switch=switch, sampling=sampling_defaults(config.get("search", {})))


def sampling_defaults(search: dict) -> dict:
    """genai_config.json's "search" as SamplingConfig fields: greedy unless do_sample, then its temperature, top_k
    and top_p; its repetition penalty either way (genai's Generator applies them the same way)."""
    out = {}
    if not search.get("do_sample", False):
        out["temperature"] = 0.0
    else:
        for key in ("temperature", "top_k", "top_p"):
            if key in search:
                out[key] = search[key]
    if "repetition_penalty" in search:
        out["repetition_penalty"] = search["repetition_penalty"]
    return out


def _templates(folder: Path, max_length: int) -> dict:
    """phi-1.5's formats, and "chat" from the package's own chat template where Jinja can render it."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / TOKENIZER))
    try:
        from export.chat_template import package_templates

        return package_templates(folder, TEMPLATES, max_length, lambda text: len(tok.encode(text).ids))
    except ImportError:  # jinja2 is not installed (a runtime-only install)
        print("notice: jinja2 is not installed, so the package's own chat template is not used (pip install jinja2)",
              file=sys.stderr)
        return dict(TEMPLATES)
