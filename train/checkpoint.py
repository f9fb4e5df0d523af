"""Checkpoint folders: config.json + safetensors weights (+ tokenizer.json), read and written.

Reads the Hugging Face layout (single file or sharded with model.safetensors.index.json; fp32, fp16, bf16)
and the older phi-msft and MixFormerSequential layouts (train/layouts.py), streaming tensor by tensor from
memory-mapped safetensors. Pickle files are refused: this project never unpickles, nor runs code that a
checkpoint ships.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from runtime import files

from .config import PhiConfig, load_config
from .layouts import detect_layout, map_name, stored_layers
from .model import CausalLM

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.json"
_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def read_config(path: Path) -> PhiConfig:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist; pass the folder that holds "
                                f"config.json and model.safetensors")
    return load_config(path / CONFIG)


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, from the shard index when there is one."""
    path = Path(path)
    index = path / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8-sig"))["weight_map"]
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise ValueError(f"{index} is not a valid shard index ({e!r}); re-save the checkpoint") from None
        files = [path / f for f in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists shards that are missing: {', '.join(missing)}; copy them "
                                    f"into {path}")
        return files
    if (path / WEIGHTS).is_file():
        return [path / WEIGHTS]
    found = sorted(path.glob("*.safetensors"))
    if found:
        return found
    pickles = sorted(p.name for pattern in _PICKLES for p in path.glob(pattern))
    if pickles:
        raise ValueError(
            f"{path} holds pickle weights ({', '.join(pickles)}), which this project never loads because "
            f"unpickling can run arbitrary code; convert them once, on a machine you trust, with: python -c "
            f"\"import torch; from safetensors.torch import save_file; "
            f"save_file(torch.load('{pickles[0]}', weights_only=True), 'model.safetensors')\"")
    raise FileNotFoundError(f"{path} has no model.safetensors (nor a shard index); pass a checkpoint folder")


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape for `config`'s architecture."""
    from .architectures import architecture

    return architecture(config).shapes(config)


def phi_shapes(config: PhiConfig) -> dict[str, tuple[int, ...]]:
    h, f, v, d = config.hidden_size, config.intermediate_size, config.vocab_size, config.head_dim
    q, kv = config.n_heads * d, config.kv_heads * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        for name, (rows, cols) in {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h),
                                   "self_attn.v_proj": (kv, h), "self_attn.dense": (h, q),
                                   "mlp.fc1": (f, h), "mlp.fc2": (h, f)}.items():
            shapes[f"{p}{name}.weight"] = (rows, cols)
            shapes[f"{p}{name}.bias"] = (rows,)
        shapes[f"{p}input_layernorm.weight"] = shapes[f"{p}input_layernorm.bias"] = (h,)
    shapes["model.final_layernorm.weight"] = shapes["model.final_layernorm.bias"] = (h,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, h)
    shapes["lm_head.bias"] = (v,)
    return shapes


class CheckpointReader:
    """Random access to a checkpoint's tensors by HF name, from memory-mapped safetensors.

    Every stored name and shape is checked against config.json from the file headers before any tensor
    data is read; get() then loads one tensor (or the rows of a stacked Wqkv) at a time, so a caller that
    converts as it goes never holds the whole model. Raises ValueError naming any tensor that is missing,
    unexpected or of the wrong shape.
    """

    def __init__(self, path: Path, config: PhiConfig | None = None):
        self.path = Path(path)
        self.config = config or read_config(self.path)
        stored: dict[str, Path] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: dict[str, str] = {}
        for file in weight_files(self.path):
            with _open_safetensors(file) as handle:
                for name in handle.keys():
                    stored[name] = file
                    piece = handle.get_slice(name)
                    shapes[name], dtypes[name] = tuple(piece.get_shape()), piece.get_dtype()
        self.layout = detect_layout(stored)
        from .architectures import architecture

        if self.layout not in architecture(self.config).layouts:
            raise ValueError(f"{self.path} stores its tensors in the {self.layout} layout, which is never used for "
                             f"model_type {self.config.model_type!r}; config.json and the weights disagree")
        have = stored_layers(self.layout, stored)  # before anything builds a table per layer of config.json's count
        if self.config.n_layers != have:
            raise ValueError(f"config.json says {self.config.n_layers} layers (num_hidden_layers) but the weights of "
                             f"{self.path} hold {have}; the config and the weights disagree")
        mapped = {name: map_name(self.layout, name, self.config) for name in stored}
        self.shapes = expected_shapes(self.config)
        self._where: dict[str, tuple] = {}  # HF name -> (file, stored name, piece)
        for name, file in stored.items():
            pieces = mapped[name]
            if pieces is None:
                continue
            _check_dtype(self.path, name, dtypes[name])
            if any(p.hf_name not in self.shapes for p in pieces):
                raise ValueError(f"tensor {name!r} is not expected for this config.json (e.g. lm_head.weight "
                                 f"with tied embeddings); check that config.json belongs to these weights")
            shape = shapes[name]
            want = _stored_shape(pieces, self.shapes)
            if shape != want:
                raise ValueError(f"tensor {name!r} has shape {shape} but config.json implies {want}; the config "
                                 f"and the weights disagree")
            for piece in pieces:
                self._where[piece.hf_name] = (file, name, piece)
        missing = [n for n in self.shapes if n not in self._where]
        if missing:
            raise ValueError(f"checkpoint {self.path} lacks {len(missing)} tensors, e.g. {missing[0]!r}; it is "
                             f"incomplete or its config.json describes a larger model")

    def names(self) -> list[str]:
        return list(self.shapes)

    @property
    def dtype(self) -> torch.dtype:
        file, name, _ = self._where["model.embed_tokens.weight"]
        with _open_safetensors(file) as handle:
            return handle.get_slice(name)[:1].dtype

    def get(self, hf_name: str) -> torch.Tensor:
        """One tensor, copied out of a mapping that is closed again at once: pages of the checkpoint that a
        held-open mapping would keep resident (and counted in RSS) are released tensor by tensor."""
        file, name, piece = self._where[hf_name]
        with _open_safetensors(file) as handle:
            if piece.start is None:
                return handle.get_tensor(name)
            return handle.get_slice(name)[piece.start:piece.stop]


# safetensors dtypes of weights: the floats a checkpoint is meant to hold. float64 is a float format too (some
# converters write it): it is read and converted to float32, once said. Integers, bools and float8 are not weights
# this architecture has: a float cast would silently change them, so they are refused by name.
FLOAT_DTYPES = ("F32", "F16", "BF16")
_said_float64: set[Path] = set()


def _check_dtype(path: Path, name: str, dtype: str) -> None:
    if dtype in FLOAT_DTYPES:
        return
    if dtype == "F64":
        if path not in _said_float64:
            _said_float64.add(path)
            print(f"note: {path} stores float64 weights (e.g. {name!r}); they are converted to float32",
                  file=sys.stderr)
        return
    raise ValueError(f"tensor {name!r} of {path} is {dtype}, not a float32/float16/bfloat16 weight; it would be cast "
                     f"silently, so the checkpoint is refused (quantized or damaged weights: convert them to floats "
                     f"first)")


def _open_safetensors(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}); it is corrupt or incomplete, copy "
                         f"or download it again") from None


def iter_tensors(path: Path, config: PhiConfig | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (HF name, tensor) one at a time; see CheckpointReader."""
    reader = CheckpointReader(path, config)
    for name in reader.names():
        yield name, reader.get(name)


def _stored_shape(pieces, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Shape a stored tensor must have: the HF tensor's, or its pieces stacked along rows (Wqkv)."""
    first = shapes[pieces[0].hf_name]
    if len(pieces) == 1:
        return first
    return (sum(shapes[p.hf_name][0] for p in pieces), *first[1:])


def tokenizer_file(path: Path) -> Path | None:
    candidate = Path(path) / TOKENIZER
    return candidate if candidate.is_file() else None


def load_pretrained(path: str | Path, dtype: torch.dtype | str = torch.float32,
                    device: torch.device | str = "cpu") -> CausalLM:
    """Loads a phi checkpoint folder in any supported layout; dtype "auto" keeps the stored precision."""
    path = Path(path)
    config = read_config(path)
    reader = CheckpointReader(path, config)
    if dtype == "auto":
        dtype = reader.dtype
    from .architectures import build_model

    with torch.device("meta"):
        model = build_model(config)
    model.to_empty(device=device)
    model.to(dtype)
    model.model.rotary = type(model.model.rotary)(config).to(device)  # buffers, not stored in checkpoints
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in reader.names():
            params[name].copy_(reader.get(name))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.tokenizer_file = tokenizer_file(path)
    return model.eval()


def save_pretrained(model: CausalLM, path: str | Path, dtype: str | torch.dtype | None = None,
                    max_shard_bytes: int | None = None, tokenizer: Path | None = None) -> Path:
    """Writes config.json, model.safetensors (or shards + index) and tokenizer.json, atomically.

    The folder is built under a temporary name beside `path` and renamed into place at the end, so an
    interrupted save never leaves a half-written checkpoint; an existing folder at `path` is replaced.
    """
    path = Path(path)
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
        dtype = _DTYPES[dtype]
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # tied to the embedding; safetensors refuses shared storage
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[name] = tensor.contiguous()
    tmp = files.make_tmp_dir(path)
    try:
        model.config.save(tmp / CONFIG)
        _write_weights(state, tmp, max_shard_bytes)
        source = tokenizer or getattr(model, "tokenizer_file", None)
        if source is not None:
            shutil.copyfile(source, tmp / TOKENIZER)
        files.replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_weights(state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int | None) -> None:
    meta = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(state, str(folder / WEIGHTS), metadata=meta)
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / file), metadata=meta)
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                           indent=2) + "\n")
