"""The default thread count, measured on the device rather than guessed.

How many intra-op threads speed up decode depends on the model and the device: on the project's 2-core x86
machine one thread decodes the 7 M-parameter demo model fastest (each op is too short to pay for handing
work to a second thread), while a phi-1.5-size model is bound by memory bandwidth and gains from both cores.
So the default ("auto") times a few decode steps at each candidate count (1, 2, 4, ... up to the cores this
process may run on) the first time a package is loaded, keeps the fewest threads within 5 % of the fastest
(fewer threads, less energy), and caches the choice.

Cache: one small JSON file per key in ~/.cache/phi-edge/threads/ ($PHI_EDGE_CACHE overrides the folder),
written atomically, so processes loading packages at the same time never lose each other's entries. The key
is the package's weights and logits mode, the profile, the CPU architecture and the set of usable cores
(CPU affinity: a process pinned to 2 of 8 cores measures again). An entry that cannot be read, or names more
threads than the cores usable now, is measured again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from . import files

TOLERANCE = 0.05
_PROMPT, _STEPS = 16, 8


def cache_dir(kind: str = "threads") -> Path:
    root = Path(os.environ.get("PHI_EDGE_CACHE") or Path.home() / ".cache" / "phi-edge")  # empty: unset
    return root / kind


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), not every core of the machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def candidates(cores: int | None = None) -> list[int]:
    """1, 2, 4, ... up to the core count, and the core count itself."""
    cores = cores or usable_cores()
    out, n = [], 1
    while n < cores:
        out.append(n)
        n *= 2
    return out + [cores]


def choose(seconds_per_token: dict[int, float], tolerance: float = TOLERANCE) -> int:
    best = min(seconds_per_token.values())
    return min(t for t, s in seconds_per_token.items() if s <= best * (1 + tolerance))


def device_key(manifest, profile: str) -> str:
    try:
        cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        cores = f"all of {os.cpu_count()}"
    weights = manifest.files.get("model.onnx.data", {}).get("sha256", "")[:16]
    graph = manifest.files.get("model.onnx", {}).get("sha256", "")[:16]
    return (f"{platform.machine()}/cores {cores}/{profile}/logits {manifest.contract.logits}/"
            f"weights {weights}/graph {graph}")


def _entry_path(key: str, kind: str = "threads") -> Path:
    return cache_dir(kind) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _read(key: str) -> int | None:
    """The cached thread count for `key`, or None when there is none usable."""
    try:
        entry = json.loads(_entry_path(key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    threads = entry.get("threads") if isinstance(entry, dict) and entry.get("key") == key else None
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= usable_cores():
        return None
    return threads


def _write(key: str, threads: int, timings: dict[int, float]) -> None:
    entry = {"key": key, "threads": threads, "seconds_per_token": {str(t): s for t, s in timings.items()}}
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        files.write_text(_entry_path(key), json.dumps(entry, indent=1) + "\n")
    except OSError:
        pass  # a read-only home: measure again next time rather than fail


def remembered(kind: str, key: str, measure: Callable[[], float | None]) -> float | None:
    """Another per-device measurement kept the same way (one JSON file per key under cache_dir(kind)): the cached
    number for `key`, or measure() once and keep it; None (nothing measured) is not kept."""
    path = _entry_path(key, kind)
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("value"), (int, float)) \
                and not isinstance(entry["value"], bool) and entry["value"] >= 0:
            return float(entry["value"])
    except (OSError, ValueError):
        pass
    value = measure()
    if value is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            files.write_text(path, json.dumps({"key": key, "value": value}, indent=1) + "\n")
        except OSError:
            pass  # a read-only home: measure again next time rather than fail
    return value


def measure_decode(manifest, threads: int, profile: str) -> float:
    """Median seconds per decode step at `threads`, after a short prefill, within the package's max_length."""
    from .engine import EngineOptions, OrtBackend

    capacity = min(manifest.max_length, _PROMPT + _STEPS + 1)
    prompt = max(1, min(_PROMPT, capacity - _STEPS - 1))
    steps = min(_STEPS, capacity - prompt)
    backend = OrtBackend(manifest, EngineOptions(threads=threads, profile=profile, context=capacity))
    backend.step([1] * prompt)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        backend.step([1])
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:] or times)  # the first decode step warms caches up


def auto_threads(manifest, profile: str, measure: Callable[[object, int, str], float] = measure_decode) -> int:
    """The cached choice for this package on this device, measuring it the first time."""
    key = device_key(manifest, profile)
    cached = _read(key)
    if cached is not None:
        return cached
    timings = {t: measure(manifest, t, profile) for t in candidates()}
    threads = choose(timings)
    _write(key, threads, timings)
    return threads
