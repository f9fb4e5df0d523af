"""The default thread count, measured on the device rather than guessed.

How many intra-op threads speed up decode depends on the model and the device: on the project's 2-core x86
machine one thread decodes the 7 M-parameter demo model fastest (each op is too short to pay for handing
work to a second thread), while a phi-1.5-size model is bound by memory bandwidth and gains from both cores.
So the default ("auto") times a few decode steps at each candidate count the first time a package is loaded
on a device, keeps the fewest threads within 5 % of the fastest (fewer threads, less energy), and caches the
choice per package and device in ~/.cache/phi-edge/threads.json ($PHI_EDGE_CACHE overrides the folder).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

TOLERANCE = 0.05
_PROMPT, _STEPS = 16, 8


def cache_file() -> Path:
    root = Path(os.environ.get("PHI_EDGE_CACHE", Path.home() / ".cache" / "phi-edge"))
    return root / "threads.json"


def candidates(cores: int | None = None) -> list[int]:
    """1, 2, 4, ... up to the core count, and the core count itself."""
    cores = cores or os.cpu_count() or 1
    out, n = [], 1
    while n < cores:
        out.append(n)
        n *= 2
    return out + [cores]


def choose(seconds_per_token: dict[int, float], tolerance: float = TOLERANCE) -> int:
    best = min(seconds_per_token.values())
    return min(t for t, s in seconds_per_token.items() if s <= best * (1 + tolerance))


def device_key(manifest, profile: str) -> str:
    weights = manifest.files.get("model.onnx.data", {}).get("sha256", "")[:16]
    return f"{platform.machine()}/{os.cpu_count()} cores/{profile}/{weights}"


def measure_decode(manifest, threads: int, profile: str) -> float:
    """Median seconds per decode step at `threads`, after a short prefill."""
    from .engine import EngineOptions, OrtBackend

    backend = OrtBackend(manifest, EngineOptions(threads=threads, profile=profile, context=_PROMPT + _STEPS + 1))
    backend.step([1] * _PROMPT)
    times = []
    for _ in range(_STEPS):
        t = time.perf_counter()
        backend.step([1])
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])  # the first decode step warms caches up


def auto_threads(manifest, profile: str, measure: Callable[[object, int, str], float] = measure_decode) -> int:
    """The cached choice for this package on this device, measuring it the first time."""
    path, key = cache_file(), device_key(manifest, profile)
    try:
        cached = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cached = {}
    if isinstance(cached.get(key), dict) and isinstance(cached[key].get("threads"), int):
        return cached[key]["threads"]
    timings = {t: measure(manifest, t, profile) for t in candidates()}
    threads = choose(timings)
    cached[key] = {"threads": threads, "seconds_per_token": {str(t): s for t, s in timings.items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: measure again next time rather than fail
    return threads
