"""Checkpoint folder -> model package folder, streamed tensor by tensor, written atomically."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from runtime import files
from runtime.contract import FORMAT, Contract
from runtime.manifest import MANIFEST, MODEL, TEMPLATES, TOKENIZER, Manifest, sha256
from train.checkpoint import CheckpointReader, read_config, tokenizer_file

from . import kvcache
from .chat_template import package_templates
from .compat import IR_VERSION, OPSET, min_onnxruntime
from .graph import build_graph
from .options import WEB_BUFFER, ExportOptions
from .quantize import ROWS_PER_CHUNK
from .tokenizer import check_tokenizer, listed_eos_ids
from .weights import WeightWriter

DATA = MODEL + ".data"


def export_package(checkpoint: str | Path, out: str | Path, options: ExportOptions = ExportOptions(),
                   force: bool = False, tokenizer: Path | None = None, show_progress: bool = True) -> Path:
    """Writes the package for `checkpoint` to `out`; nothing is left behind if anything fails.

    Every input is checked before any work: the checkpoint, the tokenizer against the model, and `out`
    (with `force`, only a package of ours is replaced, never the checkpoint or a folder holding it).
    """
    checkpoint, out = Path(checkpoint), Path(out)
    config = read_config(checkpoint)
    # the architecture's lm_head / embedding and a block that divides the matmuls' inputs, unless given
    options = options.for_model(config.model_type, (config.hidden_size, config.intermediate_size))
    reader = CheckpointReader(checkpoint, config)  # checks every tensor's name and shape before any work
    tokenizer = tokenizer or tokenizer_file(checkpoint)
    if tokenizer is None:
        raise FileNotFoundError(f"{checkpoint} has no tokenizer.json and none was given; pass --tokenizer FILE")
    special = check_tokenizer(tokenizer, config.vocab_size, config.bos_token_id, config.eos_token_id,
                              allow_no_eos=options.no_eos, listed_eos=listed_eos_ids(checkpoint))
    config = config.replace(bos_token_id=special.bos_token_id, eos_token_id=special.eos_token_id)
    check_out(out, checkpoint, force)
    if config.rotary_dim % 16:
        raise ValueError(f"rotary dim {config.rotary_dim} is not a multiple of 16, which ONNX Runtime's "
                         f"GroupQueryAttention needs for its fused rotary embedding (every published phi has 32)")
    if options.bits is not None:
        for name, k in (("hidden size", config.hidden_size), ("MLP size", config.intermediate_size)):
            if k % options.block_size:
                raise ValueError(f"the model's {name} {k} is not a multiple of block size {options.block_size}; "
                                 f"choose a block size that divides {k}")
    max_length = options.max_length or config.max_position_embeddings
    if max_length > config.max_position_embeddings:
        raise ValueError(f"--max-length {max_length} exceeds the model's context of "
                         f"{config.max_position_embeddings} positions")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))  # as the runtime encodes a prompt
    templates = package_templates(checkpoint, TEMPLATES, max_length, lambda text: len(tok.encode(text).ids))
    window = getattr(config, "window", None)  # a cache that stops growing at the window, where it bites
    contract = Contract(n_layers=config.n_layers, kv_heads=config.kv_heads, head_dim=config.head_dim,
                        vocab_size=config.vocab_size, kv_dtype=options.cache_dtype, logits=options.logits,
                        window=window if window is not None and window < max_length else None)
    built = dataclasses.replace(contract, kv_dtype=options.float_cache_dtype)  # the graph as first built
    calibration = None
    if contract.kv_bits:  # read and tokenize the sample text before any work
        text, source = kvcache.calibration_text(options.calibration)
        calibration = (kvcache.calibration_windows(tok.encode(text).ids, max_length), source)

    out.parent.mkdir(parents=True, exist_ok=True)
    with files.sigterm_as_interrupt():
        tmp = files.make_tmp_dir(out)
        try:
            writer = WeightWriter(tmp / DATA)
            bar = tqdm(total=config.n_layers + 2, desc=f"export {options.precision}", unit="block",
                       disable=not show_progress)
            graph, recipe = build_graph(config, built, options, max_length, lambda name: _tensor(reader, name),
                                        writer, bar.update)
            writer.close()
            bar.close()
            if options.target == "web" and writer.largest > WEB_BUFFER:
                raise ValueError(f"--target web: weight {writer.largest_name} takes {writer.largest / 2**20:.0f} MiB, over "
                                 f"the {WEB_BUFFER / 2**20:g} MiB that WebGPU guarantees for one buffer (phones' GPUs "
                                 f"often allow no more); quantize it further (--embedding int4, --lm-head int4) or "
                                 f"drop --target web for GPUs with larger limits (nothing was written)")
            model = onnx.helper.make_model(graph, opset_imports=OPSET, producer_name="phi-edge",
                                           ir_version=IR_VERSION)
            onnx.save_model(model, str(tmp / MODEL))
            shutil.copyfile(tokenizer, tmp / TOKENIZER)
            kv_note = None
            if calibration is not None:
                kv_note = _quantize_cache(tmp, model, contract, calibration,
                                          _manifest(tmp, config, built, options, max_length, recipe, reader.layout,
                                                    min_onnxruntime(model), special.stop_token_ids, templates,
                                                    hashed=False),  # in memory, for calibration only
                                          config.rotary_dim, show_progress)
            _manifest(tmp, config, contract, options, max_length, recipe, reader.layout,
                      min_onnxruntime(model), special.stop_token_ids, templates, kv_note,
                      largest_tensor=writer.largest).write()
            files.replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _quantize_cache(folder: Path, model: onnx.ModelProto, contract: Contract, calibration, interim: Manifest,
                    rotary_dim: int, show_progress: bool) -> dict:
    """Calibrates the cache scales on the float-cache package in `folder` (`interim` describes it), then rewrites
    its model.onnx with the quantized cache; returns the manifest's note on the cache."""
    from runtime.engine import EngineOptions, OrtBackend

    windows, source = calibration
    backend = OrtBackend(interim, EngineOptions(threads=0, context=max(len(w) for w in windows)))
    top = kvcache.absmax(backend, tqdm(windows, desc="calibrate KV cache", unit="window", disable=not show_progress))
    del backend
    kv_scales = kvcache.scales(top, contract.kv_bits, rotary_dim)
    kvcache.quantize_cache(model, contract, kv_scales)
    onnx.save_model(model, str(folder / MODEL))
    return {"dtype": contract.kv_dtype, "bits": contract.kv_bits, "k_quant_type": kvcache.QUANT_TYPE,
            "v_quant_type": kvcache.QUANT_TYPE, "scales": "initializers kv_scale.{layer}.{kind}, float32 (1, kv_heads, "
            "1, head_dim): the calibrated max |value| of each channel x clip / (2^(bits-1) - 1)",
            "clip": kvcache.CLIP[contract.kv_bits], "calibration": {**source, "tokens": sum(len(w) for w in windows),
                                                  "windows": len(windows)}}


def _tensor(reader: CheckpointReader, name: str) -> np.ndarray:
    """A checkpoint tensor as float32 numpy, refused if it holds NaN or infinity."""
    array = reader.get(name).float().numpy()
    rows = array.reshape(len(array), -1)
    chunks = [rows[i:i + ROWS_PER_CHUNK] for i in range(0, len(rows), ROWS_PER_CHUNK)]  # a bool mask per chunk,
    if not all(np.isfinite(c).all() for c in chunks):                                   # not of a 600 M-entry one
        bad = sum(int(c.size - np.isfinite(c).sum()) for c in chunks)
        raise ValueError(f"tensor {name!r} of {reader.path} holds {bad} NaN or infinite values; the checkpoint is "
                         f"damaged or its training diverged, export an earlier checkpoint")
    return array


def check_out(out: Path, checkpoint: Path, force: bool) -> None:
    """`out` may be new, an empty folder, or (with `force`) a package this project wrote; never the checkpoint,
    a folder that holds it, nor anything else of the user's."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder; choose a new folder for the package")
    if not out.exists() or not any(out.iterdir()):
        return
    if not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it or choose another folder")
    ckpt, target = checkpoint.resolve(), out.resolve()
    if target == ckpt or target in ckpt.parents:
        raise ValueError(f"refusing --force: {out} is the checkpoint or holds it ({checkpoint}); choose another "
                         f"folder for the package")
    if not is_package(out):
        raise ValueError(f"refusing --force: {out} is not a model package (no {MANIFEST} of ours in it), so "
                         f"python -m export did not write it; remove it yourself or choose another folder")


def is_package(folder: Path) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _manifest(folder: Path, config, contract: Contract, options: ExportOptions, max_length: int,
              recipe: dict[str, str], layout: str, needs_onnxruntime: str, stops: tuple[int, ...],
              templates: dict, kv_note: dict | None = None, hashed: bool = True,
              largest_tensor: int | None = None) -> Manifest:
    import onnxruntime

    float_kept = sorted({"layer norms", "biases", "rotary cos/sin"} |
                        {k for k, v in recipe.items() if not v.startswith("int")})
    quantization = {"precision": options.precision, "bits": options.bits, "method": options.method,
                    "block_size": options.block_size, "symmetric": options.symmetric,
                    "accuracy_level": options.accuracy_level, "embedding": recipe.get("embed_tokens"),
                    "lm_head": recipe.get("lm_head"), "kept_in_float": float_kept,
                    "attention_scores": "float32 (GroupQueryAttention accumulates Q.K^T in fp32)",
                    "kv_cache": kv_note or {"dtype": contract.kv_dtype}}
    checksums = {name: {"sha256": sha256(folder / name) if hashed else "", "bytes": (folder / name).stat().st_size}
             for name in (MODEL, DATA, TOKENIZER)}
    return Manifest(folder=folder, model=config.to_hf_dict(), contract=contract, max_length=max_length,
                    quantization=quantization,
                    tokenizer={"file": TOKENIZER, "bos_token_id": config.bos_token_id,
                               "eos_token_id": config.eos_token_id, "stop_token_ids": list(stops)},
                    templates=templates, files=checksums, min_onnxruntime=needs_onnxruntime,
                    rope_switch=_rope_switch(config, max_length),
                    export={"options": options.to_json(), "source_layout": layout,
                            # one weight's bytes at most: WebGPU holds each in one buffer (runtime/web checks its limit)
                            "largest_tensor_bytes": largest_tensor,
                            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                            "numpy": np.__version__})


def _rope_switch(config, max_length: int) -> int | None:
    """The LongRoPE switch when a package can reach past it (runtime/manifest.py)."""
    longrope = getattr(config, "longrope", None)
    if longrope is None or max_length <= longrope.original_max_position_embeddings:
        return None
    return longrope.original_max_position_embeddings
