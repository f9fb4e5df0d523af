"""Models by Hugging Face id: `ORG/NAME[@REVISION][:SUBFOLDER]` wherever a package folder is taken.

    resolve("microsoft/phi-2")   ->  a package folder on this machine

    1. our package cache: refs/ORG--NAME/REVISION names the commit, packages/ORG--NAME/COMMIT/RECIPE the package;
       found, it is used with no request at all (the second call is offline and instant)
    2. the repository's file list (huggingface_hub, HF_ENDPOINT and HF_TOKEN as the user set them):
         manifest.json            a package of ours: its files downloaded as they are into packages/ (huggingface_hub's
                                  local_dir: real files, resumable), run from there
         config.json + safetensors  a checkpoint: what export reads is downloaded (config, generation config,
                                  safetensors and their index, tokenizer files; never code, never pickle), then
                                  exported once with the default recipe into packages/ (atomic: export writes a
                                  temporary folder and renames it)
         genai_config.json        an onnxruntime-genai package (Microsoft's published phi-3 ONNX folders): downloaded
                                  as it is and read as ours (runtime/genai.py)
    3. the revision's commit is written to refs/ last, so an interrupted call leaves no ref to a missing package

Downloads are huggingface_hub's: its own cache (HF_HUB_CACHE), progress bars, resumed after an interruption,
HF_HUB_OFFLINE honoured. Every failure the user can act on is one line (ValueError / FileNotFoundError /
PermissionError): a wrong id, a missing revision, a gated repository, no network, offline and not cached, a full
disk, a download that ends short. huggingface_hub is the `hub` extra; exporting a checkpoint needs the `export` one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from . import files

# ORG/NAME as the Hub spells repository ids, then @REVISION (a branch, tag or commit) and :SUBFOLDER
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<revision>[\w./-]+?))?"
                    r"(?::(?P<subfolder>[\w./-]+))?$")
MANIFEST = "manifest.json"
GENAI = "genai_config.json"
# what export reads from a checkpoint (train/checkpoint.py, export/tokenizer.py, export/chat_template.py)
CHECKPOINT_FILES = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class HubRef:
    repo: str
    revision: str = "main"
    subfolder: str = ""

    @classmethod
    def parse(cls, text: str) -> HubRef | None:
        m = HUB_ID.match(str(text))
        if m is None or ".." in str(text):
            return None
        return cls(m["repo"], m["revision"] or "main", (m["subfolder"] or "").strip("/"))

    def __str__(self) -> str:
        return self.repo + ("" if self.revision == "main" else f"@{self.revision}") + \
            (f":{self.subfolder}" if self.subfolder else "")

    @property
    def prefix(self) -> str:
        """The subfolder as a path prefix of the repository's files ("" for the root)."""
        return f"{self.subfolder}/" if self.subfolder else ""

    @property
    def key(self) -> str:
        return self.repo.replace("/", "--")


def cache_root() -> Path:
    """Our cache (PHI_EDGE_CACHE, default ~/.cache/phi-edge), beside huggingface_hub's own."""
    return Path(os.environ.get("PHI_EDGE_CACHE") or Path.home() / ".cache" / "phi-edge")


def recipe_key() -> str:
    """The default export recipe, as a short stable name: a package exported with other defaults is another."""
    from export.options import ExportOptions  # export extra: only reached when a checkpoint must be exported

    text = json.dumps(ExportOptions().to_json(), sort_keys=True)
    return "default-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _ref_file(ref: HubRef) -> Path:
    revision = hashlib.sha256(f"{ref.revision}:{ref.subfolder}".encode()).hexdigest()[:16]
    return cache_root() / "refs" / ref.key / revision


def cached(ref: HubRef) -> Path | None:
    """The package folder an earlier call left for `ref`, or None: no request is made."""
    try:
        where = Path(json.loads(_ref_file(ref).read_text())["package"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return where if (where / MANIFEST).is_file() else None


def _remember(ref: HubRef, package: Path, commit: str) -> None:
    path = _ref_file(ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text(path, json.dumps({"repo": ref.repo, "revision": ref.revision, "subfolder": ref.subfolder,
                                              "commit": commit, "package": str(package)}))


_FETCHING = threading.Lock()  # one download and export at a time per process (other processes: FileExistsError)


class MissingExtra(ValueError):
    """An optional dependency this call needs is not installed (the message names the pip extra)."""


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise MissingExtra("models by Hugging Face id need huggingface_hub: pip install 'phi-edge[hub]' (or pass a "
                           "package folder)") from None
    return huggingface_hub


def _one_line(ref: HubRef, e: Exception) -> Exception | None:
    """huggingface_hub's, the network's and the system's errors as one line naming the problem and the fix; None
    for any other error (ours already are one line)."""
    from huggingface_hub import errors as hf

    # the HTTP client's own errors (huggingface_hub runs on httpx; no connection, a timeout, a broken stream)
    network = isinstance(e, ConnectionError) or any(
        c.__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3") for c in type(e).__mro__)
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, hf.GatedRepoError) or (isinstance(e, hf.HfHubHTTPError) and status == 403):
        return PermissionError(f"{ref.repo} is gated or private: accept its terms on the Hub, then set HF_TOKEN or "
                               f"run `huggingface-cli login`")
    if isinstance(e, hf.RevisionNotFoundError):
        return FileNotFoundError(f"{ref.repo} has no revision {ref.revision!r}; pass an existing branch, tag or "
                                 f"commit after @")
    if isinstance(e, hf.RepositoryNotFoundError):
        return FileNotFoundError(f"no folder {ref.repo} here, and {ref.repo} is not a repository on {_endpoint()} "
                                 f"(or it is private: set HF_TOKEN or run `huggingface-cli login`); check the path "
                                 f"or the id")
    if isinstance(e, (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled)):
        return FileNotFoundError(f"{ref} is not in the cache and cannot be downloaded (HF_HUB_OFFLINE is set or the "
                                 f"Hub cannot be reached); go online once, or pass a local folder")
    if isinstance(e, (hf.EntryNotFoundError, getattr(hf, "RemoteEntryNotFoundError", hf.EntryNotFoundError))):
        return FileNotFoundError(f"{ref} lacks a file it lists; the repository changed during the download, try again")
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OSError(e.errno, f"no space left to download {ref} ({e.filename or 'the cache'}); free some space "
                                f"or point HF_HUB_CACHE and PHI_EDGE_CACHE at a larger disk")
    message = " ".join(str(e).split())
    sizes = re.search(r"should be of size (\d+) but has size (\d+)", message)
    if sizes:
        return OSError(f"a file of {ref} does not match its announced size ({sizes[1]} bytes announced, {sizes[2]} "
                       f"received; the partial file was discarded); run the command again, and if it persists the "
                       f"server or a proxy is at fault")
    if isinstance(e, hf.HfHubHTTPError) or network:
        return OSError(f"cannot download {ref} from {_endpoint()}: {message[:200]}; check the connection (or "
                       f"HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to use what is cached")
    return None


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_id(text: str | Path) -> HubRef | None:
    """`text` as a Hugging Face id, or None when it names a local path: it exists, it does not look like
    ORG/NAME[@REVISION][:SUBFOLDER], or its first part is a folder here (a typo in a local path is not sent to the
    Hub; the caller's own "does not exist" error says it)."""
    text = str(text)
    if Path(text).exists():
        return None
    ref = HubRef.parse(text)
    if ref is None or Path(ref.repo.split("/")[0]).is_dir():
        return None
    return ref


def _mapped_errors(ref: HubRef, body):
    """body(hub) with huggingface_hub's, the network's and the system's errors turned into one line."""
    hub = _hub()
    try:
        return body(hub)
    except Exception as e:
        mapped = _one_line(ref, e)
        if mapped is None:
            raise
        raise mapped from None


def _listing(hub, ref: HubRef) -> tuple[str, list[str]]:
    """(commit, the files under the ref's subfolder, relative to it)."""
    info = hub.HfApi().model_info(ref.repo, revision=ref.revision)
    inside = [s.rfilename[len(ref.prefix):] for s in info.siblings or [] if s.rfilename.startswith(ref.prefix)]
    if not inside:
        raise FileNotFoundError(f"{ref.repo} has no folder {ref.subfolder!r}; pass one of its folders after ':'")
    return info.sha, inside


def _checkpoint_snapshot(hub, ref: HubRef, commit: str, inside: list[str]) -> Path:
    """Downloads what export reads of the checkpoint at `ref` (refusing anything else) and returns its folder."""
    if GENAI in inside or MANIFEST in inside:
        raise ValueError(f"{ref} is a model package, not a checkpoint: run it as it is (--model {ref}) instead of "
                         f"exporting it")
    top = [n for n in inside if "/" not in n]
    if "config.json" not in top or not any(n.endswith(".safetensors") for n in top):
        pickles = [n for n in top if n.endswith(PICKLES)]
        if pickles:
            raise ValueError(f"{ref} holds its weights as pickle files ({pickles[0]}), which we never load; use a "
                             f"revision with safetensors weights")
        raise ValueError(f"{ref} holds no checkpoint (config.json and safetensors) and no model package; pass a "
                         f"model repository's id")
    snapshot = hub.snapshot_download(repo_id=ref.repo, revision=commit,
                                     allow_patterns=[ref.prefix + p for p in CHECKPOINT_FILES])
    return Path(snapshot) / ref.subfolder


def checkpoint(text: str | Path) -> Path:
    """A checkpoint folder for `text`: a folder as it is, else the checkpoint at a Hugging Face id, downloaded into
    huggingface_hub's cache (python -m export ORG/NAME OUT)."""
    ref = hub_id(text)
    if ref is None:
        return Path(text)
    return _mapped_errors(ref, lambda hub: _checkpoint_snapshot(hub, ref, *_listing(hub, ref)))


def resolve(text: str | Path, show_progress: bool = True) -> Path:
    """The package folder for `text`: a local path as it is (hub_id), else a Hugging Face id's (module docstring)."""
    ref = hub_id(text)
    if ref is None:
        return Path(text)
    found = cached(ref)
    if found is not None:
        return found
    with _FETCHING:  # two threads of one process would share export's and the ref's temporary names (the pid's)
        found = cached(ref)  # the other thread may have fetched it meanwhile
        if found is not None:
            return found
        return _mapped_errors(ref, lambda hub: _fetch(hub, ref, *_listing(hub, ref), show_progress))


def _fetch(hub, ref: HubRef, commit: str, inside: list[str], show_progress: bool) -> Path:
    out = cache_root() / "packages" / ref.key / commit / (ref.subfolder.replace("/", "--") or "root")
    if MANIFEST in inside or GENAI in inside:  # a package (ours, or onnxruntime-genai's: runtime/genai.py reads it):
        # its files themselves, as the runtime refuses links out of a package
        local = out / "as-published"
        hub.snapshot_download(repo_id=ref.repo, revision=commit, allow_patterns=[f"{ref.prefix}*"], local_dir=local)
        _remember(ref, local / ref.subfolder, commit)
        return local / ref.subfolder
    try:
        from export.package import export_package
    except ImportError:
        raise MissingExtra(f"{ref} is a checkpoint, and exporting it needs the export extra: pip install "
                           f"'phi-edge[export]' (or pass an exported package's id or folder)") from None
    snapshot = _checkpoint_snapshot(hub, ref, commit, inside)
    out = out / recipe_key()
    if not (out / MANIFEST).is_file():
        try:
            export_package(snapshot, out, show_progress=show_progress)
        except FileExistsError:  # another process exported it meanwhile
            if not (out / MANIFEST).is_file():
                raise
    _remember(ref, out, commit)
    return out
