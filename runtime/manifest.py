"""manifest.json: what a model package is, read and checked without torch.

A package folder holds model.onnx, model.onnx.data, tokenizer.json and manifest.json. The manifest carries
the model config, the I/O contract (runtime/contract.py), KV layout and maximum length, the quantization
recipe, special token ids, the prompt templates and a sha256 of every other file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contract import FORMAT, FORMAT_VERSION, Contract

MANIFEST = "manifest.json"
MODEL = "model.onnx"
TOKENIZER = "tokenizer.json"

# Prompt formats of the phi-1.5 report (sec. 5). "{prompt}" is the user's text; stop strings end a reply
# where the base model would start the next turn on its own.
TEMPLATES: dict[str, dict[str, Any]] = {
    "completion": {"prompt": "{prompt}", "stop": []},
    "qa": {"prompt": "Question: {prompt}\nAnswer:", "stop": ["\nQuestion:"]},
    "chat": {"prompt": "Alice: {prompt}\nBob:", "stop": ["\nAlice:", "\nBob:"],
             "turn": "\nAlice: {prompt}\nBob:"},
    "instruct": {"prompt": "Instruct: {prompt}\nOutput:", "stop": ["\nInstruct:"]},
    "code": {"prompt": "{prompt}", "stop": ["\ndef ", "\nclass ", "\nif __name__", "\n\n\n"]},
}


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    folder: Path
    model: dict[str, Any]  # the model config (Hugging Face PhiConfig keys)
    contract: Contract
    max_length: int
    quantization: dict[str, Any]
    tokenizer: dict[str, Any]  # {"file", "bos_token_id", "eos_token_id"}
    templates: dict[str, dict[str, Any]]
    files: dict[str, dict[str, Any]]  # name -> {"sha256", "bytes"}
    export: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": self.model,
                "io": self.contract.to_json(), "max_length": self.max_length, "quantization": self.quantization,
                "tokenizer": self.tokenizer, "templates": self.templates, "files": self.files,
                "export": self.export}

    def write(self) -> None:
        (self.folder / MANIFEST).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def verify_checksums(self) -> None:
        for name, entry in self.files.items():
            if sha256(self.folder / name) != entry["sha256"]:
                raise ValueError(f"{self.folder / name} does not match its sha256 in {MANIFEST}: the file is "
                                 f"corrupted or was changed; copy the package again or re-export it")


def load_manifest(folder: str | Path, verify: bool = False) -> Manifest:
    """Reads and validates a package's manifest; `verify` also checks every file's sha256."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise FileNotFoundError(f"model package {folder} does not exist; pass a folder written by python -m export")
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST}, so it is not a model package; export one with "
                                f"python -m export CHECKPOINT {folder}")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-export the package") from None
    if d.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} manifest (format {d.get('format')!r})")
    if d.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {d.get('format_version')!r} but this runtime reads version "
                         f"{FORMAT_VERSION}; re-export the package with this version of the project")
    try:
        manifest = Manifest(folder, d["model"], Contract.from_json(d["io"], d["model"]["vocab_size"]),
                            int(d["max_length"]), d["quantization"], d["tokenizer"], d["templates"], d["files"],
                            d.get("export", {}))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} lacks or mangles field {e}; re-export the package") from None
    for name in (MODEL, manifest.tokenizer["file"], *manifest.files):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing from the package; copy the whole folder")
    if verify:
        manifest.verify_checksums()
    return manifest
