"""The Android engine's host tests and the ARM64 check, run from pytest so CI runs them.

test_android_engine_on_jvm: `bash android_demo/test-host.sh` compiles the plain-Kotlin engine with the npm
package kotlin-compiler and runs its JUnit tests against golden vectors from the Python runtime
(android_demo/make_golden.py). Skipped only when the Kotlin toolchain cannot be installed (no JDK, no npm).

test_arm64_greedy_matches_x86: `bash benchmarks/arm64.sh` runs runtime.generate as aarch64 under qemu-user and
compares its greedy text with x86-64's (about 20 s once its cache is filled, a minute or two before). Skipped
where it cannot set itself up: not root on a Debian x86-64 machine with apt.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_android_engine_on_jvm():
    missing = [tool for tool in ("java", "npm") if shutil.which(tool) is None]
    if missing and not (ROOT / "android_demo/.host/npm/node_modules/kotlin-compiler").is_dir():
        pytest.skip(f"Kotlin toolchain cannot be installed: {', '.join(missing)} not on PATH "
                    f"(needs a JDK 17+ and npm for the kotlin-compiler package)")
    if shutil.which("java") is None:
        pytest.skip("Kotlin toolchain cannot run: no java on PATH (install openjdk-17-jdk-headless)")
    out = _run(["bash", "android_demo/test-host.sh"], timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    summary = re.search(r"host tests: (\d+) passed, (\d+) failed", log)
    assert summary and int(summary.group(1)) > 0 and summary.group(2) == "0", log[-6000:]
    for case in ("greedy", "top_k_1", "stop_split", "chat_two_turns", "chat_stop_pending"):
        assert f"golden: {case} ok" in log, log[-6000:]


def test_arm64_greedy_matches_x86():
    if platform.machine() != "x86_64" or shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        pytest.skip("the ARM64 check sets itself up with Debian's apt on x86-64; this machine is not one")
    if os.geteuid() != 0 and shutil.which("qemu-aarch64") is None:
        pytest.skip("the ARM64 check installs qemu-user and arm64 python with apt, which needs root")
    out = _run(["bash", "benchmarks/arm64.sh"], timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert "arm64: greedy output equals x86-64" in log, log[-6000:]
