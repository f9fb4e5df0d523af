"""manifest.json: what a model package is, read and checked without torch.

A package folder holds model.onnx, model.onnx.data, tokenizer.json and manifest.json. The manifest carries
the model config, the I/O contract (runtime/contract.py), KV layout and maximum length, the quantization
recipe, special token ids, the prompt templates and a sha256 of every other file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contract import FORMAT, FORMAT_VERSION, READABLE_VERSIONS, Contract

MANIFEST = "manifest.json"
# What happens to positions already in the KV cache when a sequence grows past the LongRoPE switch (written into
# manifests that have one, for other runtimes reading the package).
ROPE_SWITCH_POLICY = ("recomputed: the graph rotates with the long LongRoPE tables once a step's total length "
                      "exceeds rope_switch; keys cached before were rotated with the short ones, so the runtime "
                      "feeds the whole sequence again from its tokens (transformers' generate does the same)")
MODEL = "model.onnx"
TOKENIZER = "tokenizer.json"
MAX_LENGTH = 2**31 - 1  # GroupQueryAttention counts positions in int32

# What Python's str.strip() removes, and so Jinja's `| trim` in a chat template (export/chat_template.py): a template
# with "trim" strips exactly these from the user's and the system's text. Kotlin and JavaScript spell the same list
# (their own trim functions differ from Python's).
TRIM_CHARACTERS = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
                   "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
TEMPLATE_TEXTS, TEMPLATE_FLAGS = ("prompt", "turn", "system"), ("trim", "omit_empty_system")

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


def fill_template(template: dict[str, Any], prompt: str, part: str = "prompt", system: str | None = None,
                  name: str = "chat") -> str:
    """`template`'s `part` ("prompt", or "turn" for chat) with the user's text in place of {prompt}; with a `system`
    message the first turn uses its "system" part ({system} and {prompt}). "trim" strips both texts as Python's
    str.strip() (TRIM_CHARACTERS), "omit_empty_system" leaves an empty system message out. One pass, so text that
    holds "{prompt}" stays as typed. The Kotlin and web engines fill parts the same way."""
    strip = str.strip if template.get("trim") else (lambda text: text)
    if system is not None and template.get("omit_empty_system") and not strip(system):
        system = None  # the template leaves an empty system message out
    if system is not None and part == "prompt":
        if "system" not in template:
            raise ValueError(f"template {name!r} takes no system message; drop --system")
        part = "system"
    if part not in template:
        raise ValueError(f"template {name!r} has no {part!r} part; chat needs a template with a 'turn' part")
    values = {"prompt": strip(prompt), "system": strip(system or "")}
    return re.sub(r"\{(prompt|system)\}", lambda m: values[m.group(1)], template[part])


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
    tokenizer: dict[str, Any]  # {"file", "bos_token_id", "eos_token_id", "stop_token_ids"}
    templates: dict[str, dict[str, Any]]
    files: dict[str, dict[str, Any]]  # name -> {"sha256", "bytes"}
    export: dict[str, Any]
    min_onnxruntime: str | None = None  # oldest onnxruntime that runs the graph (export/compat.py); None: unknown
    # LongRoPE: the graph rotates with the long tables once a step's sequence is longer than this. Positions
    # cached before a sequence grows past it were rotated with the short ones, so the runtime then computes the
    # whole sequence again from its tokens (as transformers' generate does). None: one rotary table.
    rope_switch: int | None = None
    # The package's own sampling defaults (SamplingConfig field -> value), which the CLI uses for every flag not
    # given: an onnxruntime-genai package's "search" section (runtime/genai.py); None for ours.
    sampling: dict[str, Any] | None = None

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Every id that ends generation: the manifest's list, or its one eos id (packages before the list)."""
        stops = self.tokenizer.get("stop_token_ids")
        if stops:
            return tuple(int(i) for i in stops)
        eos = self.tokenizer.get("eos_token_id")
        return () if eos is None else (int(eos),)

    def check_onnxruntime(self, version: str) -> None:
        """Raises ValueError when onnxruntime `version` is older than the package needs."""
        if self.min_onnxruntime and version_tuple(version) < version_tuple(self.min_onnxruntime):
            raise ValueError(f"{self.folder} needs onnxruntime >= {self.min_onnxruntime} but {version} is installed; "
                             f"upgrade it (pip install 'onnxruntime>={self.min_onnxruntime}'), or re-export the "
                             f"package for an older release (--embedding fp32 --lm-head int4 runs on 1.20)")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": self.model,
                "io": self.contract.to_json(), "max_length": self.max_length, "quantization": self.quantization,
                "tokenizer": self.tokenizer, "templates": self.templates, "files": self.files,
                "min_onnxruntime": self.min_onnxruntime, "rope_switch": self.rope_switch,
                **({"rope_switch_cached_positions": ROPE_SWITCH_POLICY} if self.rope_switch else {}),
                "export": self.export}

    def write(self) -> None:
        (self.folder / MANIFEST).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def verify_checksums(self, names=None) -> None:
        """Checks the sha256 of `names` (default: every file the manifest lists)."""
        for name in self.files if names is None else names:
            if sha256(self.folder / name) != self.files[name]["sha256"]:
                raise ValueError(f"{self.folder / name} does not match its sha256 in {MANIFEST}: the file is "
                                 f"corrupted or was changed; copy the package again or re-export it")


def version_tuple(version: str) -> tuple[int, ...]:
    """"1.23.2" -> (1, 23, 2); a suffix such as "1.24.0.dev20250101" or "1.22.0+cpu" is ignored."""
    parts = []
    for piece in str(version).split("+")[0].split(".")[:3]:
        digits = ""
        for c in piece:
            if not c.isdigit():
                break
            digits += c
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _plain_name(name: object) -> bool:
    """A file name inside the package folder: no folders, no '..', nothing absolute."""
    return isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def _check_fields(d: object, path: Path) -> None:
    """Raises ValueError naming the first field of manifest.json that is missing or of the wrong kind."""
    def bad(field: str, want: str) -> ValueError:
        return ValueError(f"{path}: field {field!r} {want}; the manifest is damaged, re-export the package")

    if not isinstance(d, dict):
        raise ValueError(f"{path} holds a JSON {type(d).__name__}, not an object; re-export the package")
    for key in ("model", "io", "quantization", "tokenizer", "templates", "files"):
        if not isinstance(d.get(key), dict):
            raise bad(key, "is missing or not an object")
    if "export" in d and not isinstance(d["export"], dict):
        raise bad("export", "is not an object")
    length = d.get("max_length")
    if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= MAX_LENGTH:
        raise bad("max_length", f"must be an integer from 2 to {MAX_LENGTH}, got {length!r}")
    vocab = d["model"].get("vocab_size")
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
        raise bad("model.vocab_size", f"must be a positive integer, got {vocab!r}")
    if not _plain_name(d["tokenizer"].get("file")):
        raise bad("tokenizer.file", f"must name a file in the package folder, got {d['tokenizer'].get('file')!r}")
    for key in ("bos_token_id", "eos_token_id"):
        value = d["tokenizer"].get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab):
            raise bad(f"tokenizer.{key}", f"must be null or a token id in 0..{vocab - 1}, got {value!r}")
    stops = d["tokenizer"].get("stop_token_ids", [])
    if not isinstance(stops, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab
                                              for i in stops):
        raise bad("tokenizer.stop_token_ids", f"must be a list of token ids in 0..{vocab - 1}, got {stops!r}")
    for name, entry in d["files"].items():
        if not _plain_name(name) or not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise bad(f"files.{name}", "must name a file in the package folder with its sha256")
    for name, template in d["templates"].items():
        if not isinstance(template, dict) or not isinstance(template.get("prompt"), str) or \
                not all(isinstance(template.get(k, ""), str) for k in TEMPLATE_TEXTS) or \
                not all(isinstance(template.get(k, False), bool) for k in TEMPLATE_FLAGS) or \
                not set(template) <= {*TEMPLATE_TEXTS, *TEMPLATE_FLAGS, "stop"} or \
                not isinstance(template.get("stop", []), list) or \
                not all(isinstance(x, str) for x in template.get("stop", [])):
            raise bad(f"templates.{name}", f"must be an object with string parts ({', '.join(TEMPLATE_TEXTS)}; a "
                      f"'prompt' at least), true/false flags ({', '.join(TEMPLATE_FLAGS)}) and a 'stop' list")
    switch = d.get("rope_switch")
    if switch is not None and (isinstance(switch, bool) or not isinstance(switch, int) or switch < 1):
        raise bad("rope_switch", f"must be null or a positive integer, got {switch!r}")
    if "min_onnxruntime" in d and (not isinstance(d["min_onnxruntime"], str) or
                                   not version_tuple(d["min_onnxruntime"])):
        raise bad("min_onnxruntime", f"must be a version string such as \"1.23.0\", got {d['min_onnxruntime']!r}")


def load_manifest(folder: str | Path, verify: bool = False) -> Manifest:
    """Reads and validates a package's manifest; `verify` also checks every file's sha256."""
    folder = Path(folder)
    path = folder / MANIFEST
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"model package {folder} is a file; pass the package folder (the one holding "
                                 f"{MANIFEST}, {MODEL} and {TOKENIZER})")
    if not folder.is_dir():
        raise FileNotFoundError(f"model package {folder} does not exist; pass a folder written by python -m export")
    if not path.is_file():
        from .genai import genai_manifest, is_genai  # genai.py builds a Manifest: imported here, not at the top

        if is_genai(folder):  # an onnxruntime-genai package, read as ours in memory (runtime/genai.py)
            return genai_manifest(folder)
        raise FileNotFoundError(f"{folder} has no {MANIFEST}, so it is not a model package; export one with "
                                f"python -m export CHECKPOINT {folder}")
    try:
        d = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is not valid JSON ({e}); re-export the package") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        found = d.get("format") if isinstance(d, dict) else f"a JSON {type(d).__name__}"
        raise ValueError(f"{path} is not a {FORMAT} manifest (format {found!r}); re-export the package")
    if d.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(f"{path} has format version {d.get('format_version')!r} but this runtime reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}; re-export the package with this version of the "
                         f"project")
    _check_fields(d, path)
    try:
        manifest = Manifest(folder, d["model"], Contract.from_json(d["io"], d["model"]["vocab_size"]),
                            d["max_length"], d["quantization"], d["tokenizer"], d["templates"], d["files"],
                            d.get("export", {}), d.get("min_onnxruntime"), d.get("rope_switch"))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} lacks or mangles field {e}; re-export the package") from None
    inside = folder.resolve()
    for name in (MODEL, manifest.tokenizer["file"], *manifest.files):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing from the package; copy the whole folder")
        target = (folder / name).resolve()
        if inside not in target.parents:  # ONNX Runtime refuses external data outside the model's folder too
            raise ValueError(f"{folder / name} is a link to {target}, outside the package folder; put the file "
                             f"itself (or a link to a file inside the folder) there")
    if verify:
        manifest.verify_checksums()
    elif manifest.tokenizer["file"] in manifest.files:  # small, and another tokenizer would fail silently
        manifest.verify_checksums([manifest.tokenizer["file"]])
    return manifest
