"""The machine a benchmark ran on: CPU model, cores, memory, and memory bandwidth measured with numpy.

Decode of a model that does not fit in cache reads every weight once per token, so the copy bandwidth
bounds it:  tokens/s <= bandwidth / weight bytes  (bandwidth_bound below).
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def copy_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes/s moved by one thread copying a `mib` MiB float32 array (read + write counted), best of repeats."""
    src = np.ones(mib * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch every page first
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best


def bandwidth_bound(bandwidth: float, weight_bytes: int) -> float:
    """Tokens/s that reading `weight_bytes` once per token at `bandwidth` bytes/s allows."""
    return bandwidth / weight_bytes


def describe(measure_bandwidth: bool = True) -> dict:
    info = {"cpu": cpu_model(), "cores": usable_cores(), "logical_cpus": os.cpu_count(),
            "memory_bytes": memory_bytes(), "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "load_average_1_5_15_min": os.getloadavg() if hasattr(os, "getloadavg") else None}  # shared machines
    if measure_bandwidth:
        info["copy_bandwidth_bytes_per_s"] = copy_bandwidth()
    return info


if __name__ == "__main__":
    import json

    print(json.dumps(describe(), indent=2))
