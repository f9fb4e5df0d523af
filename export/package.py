"""Checkpoint folder -> model package folder, streamed tensor by tensor, written atomically."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from runtime.contract import Contract
from runtime.manifest import MODEL, TEMPLATES, TOKENIZER, Manifest, sha256
from train.checkpoint import CheckpointReader, read_config, tokenizer_file

from .graph import OPSET, build_graph
from .options import ExportOptions
from .weights import WeightWriter

DATA = MODEL + ".data"


def export_package(checkpoint: str | Path, out: str | Path, options: ExportOptions = ExportOptions(),
                   force: bool = False, tokenizer: Path | None = None, show_progress: bool = True) -> Path:
    """Writes the package for `checkpoint` to `out`; nothing is left behind if anything fails."""
    checkpoint, out = Path(checkpoint), Path(out)
    config = read_config(checkpoint)
    reader = CheckpointReader(checkpoint, config)  # checks every tensor's name and shape before any work
    tokenizer = tokenizer or tokenizer_file(checkpoint)
    if tokenizer is None or not Path(tokenizer).is_file():
        raise FileNotFoundError(f"{checkpoint} has no tokenizer.json and none was given; pass --tokenizer FILE")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it or choose another folder")
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
    contract = Contract(n_layers=config.n_layers, kv_heads=config.kv_heads, head_dim=config.head_dim,
                        vocab_size=config.vocab_size, kv_dtype=options.float_dtype, logits=options.logits)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        writer = WeightWriter(tmp / DATA)
        bar = tqdm(total=config.n_layers + 2, desc=f"export {options.precision}", unit="block",
                   disable=not show_progress)
        tensors = lambda name: reader.get(name).float().numpy()
        graph, recipe = build_graph(config, contract, options, max_length, tensors, writer, bar.update)
        writer.close()
        bar.close()
        model = onnx.helper.make_model(graph, opset_imports=OPSET, producer_name="phi-edge")
        onnx.save_model(model, str(tmp / MODEL))
        shutil.copyfile(tokenizer, tmp / TOKENIZER)
        _manifest(tmp, config, contract, options, max_length, recipe, reader.layout).write()
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _manifest(folder: Path, config, contract: Contract, options: ExportOptions, max_length: int,
              recipe: dict[str, str], layout: str) -> Manifest:
    import onnxruntime

    float_kept = sorted({"layer norms", "biases", "rotary cos/sin"} |
                        {k for k, v in recipe.items() if not v.startswith("int")})
    quantization = {"precision": options.precision, "bits": options.bits, "method": options.method,
                    "block_size": options.block_size, "symmetric": options.symmetric,
                    "accuracy_level": options.accuracy_level, "embedding": recipe.get("embed_tokens"),
                    "lm_head": recipe.get("lm_head"), "kept_in_float": float_kept,
                    "attention_scores": "float32 (GroupQueryAttention accumulates Q.K^T in fp32)"}
    files = {name: {"sha256": sha256(folder / name), "bytes": (folder / name).stat().st_size}
             for name in (MODEL, DATA, TOKENIZER)}
    return Manifest(folder=folder, model=config.to_hf_dict(), contract=contract, max_length=max_length,
                    quantization=quantization,
                    tokenizer={"file": TOKENIZER, "bos_token_id": config.bos_token_id,
                               "eos_token_id": config.eos_token_id},
                    templates=TEMPLATES, files=files,
                    export={"options": options.to_json(), "source_layout": layout,
                            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                            "numpy": np.__version__})
