"""The Android engine's host tests and the ARM64 check, run from pytest so CI runs them.

test_android_engine_on_jvm: `bash android_demo/test-host.sh` compiles the plain-Kotlin engine and the phiedge
library (against onnxruntime-android's AAR from npm) with the npm package kotlin-compiler, links the app's
resources with aapt2, runs the JUnit tests (golden vectors from the Python runtime, android_demo/make_golden.py)
and replays the engine's regexes under ICU. Skipped only when the Kotlin toolchain cannot be installed (no JDK,
no npm).

test_arm64_greedy_matches_x86: `bash benchmarks/arm64.sh` runs runtime.generate as aarch64 under qemu-user and
compares its greedy text with x86-64's (about 20 s once its cache is filled, a minute or two before). Skipped
where it cannot set itself up: not root on a Debian x86-64 machine with apt.
"""

from __future__ import annotations

import json
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
    for case in ("greedy", "top_k_1", "stop_split", "chat_two_turns", "chat_stop_pending", "longrope_cross",
                 "longrope_draft", "longrope_chat_cancel", "window_draft", "window_chat_cancel", "padded_vocab",
                 "drop_oldest", "exact_fill"):
        assert f"golden: {case} ok" in log, log[-6000:]
    assert "golden: sampling limits ok" in log, log[-6000:]
    assert re.search(r"icu: \d+ patterns x \d+ inputs: ICU [\d.]+ compiles each and matches as the JVM does", log)
    assert re.search(r"compiled against onnxruntime-android [\d.]+ classes.jar: .*/OrtBackend.kt", log), log[-6000:]
    assert "aapt2: manifest and" in log, log[-6000:]


def test_arm64_greedy_matches_x86():
    if platform.machine() != "x86_64" or shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        pytest.skip("the ARM64 check sets itself up with Debian's apt on x86-64; this machine is not one")
    if os.geteuid() != 0 and shutil.which("qemu-aarch64") is None:
        pytest.skip("the ARM64 check installs qemu-user and arm64 python with apt, which needs root")
    out = _run(["bash", "benchmarks/arm64.sh"], timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert "arm64: greedy output equals x86-64" in log, log[-6000:]


def _numbers_close(a, b, tol: float) -> bool:
    """JSON values equal, floats within tol (rows that differ in the last float16 bit across CPUs)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_numbers_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_numbers_close(a[k], b[k], tol) for k in a)
    return a == b


def test_android_goldens_are_current(tmp_path):
    """make_golden.py run now writes what android_demo/golden holds: the Kotlin tests check today's runtime."""
    import gzip
    import json

    import numpy as np

    out = _run(["python", "android_demo/make_golden.py", "--out", str(tmp_path)], timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    committed = sorted(p.name for p in (ROOT / "android_demo/golden").iterdir())
    assert committed == sorted(p.name for p in tmp_path.iterdir())
    for name in committed:
        old, new = (ROOT / "android_demo/golden" / name).read_bytes(), (tmp_path / name).read_bytes()
        if name.endswith(".gz"):
            old, new = gzip.decompress(old), gzip.decompress(new)
        if name == "logits.f16.gz":
            a, b = np.frombuffer(old, "<f2").astype(np.float32), np.frombuffer(new, "<f2").astype(np.float32)
            assert a.shape == b.shape and np.abs(a - b).max() <= 0.05, f"{name}: logits moved; rerun make_golden.py"
        elif name == "sampling.json":
            assert _numbers_close(json.loads(old), json.loads(new), 1e-3), f"{name} is stale; rerun make_golden.py"
        else:
            assert old == new, f"android_demo/golden/{name} is stale: rerun python android_demo/make_golden.py"


def _icu_python() -> str:
    """Debian's python3 with python3-icu (test-host.sh installs it); skip where neither is there."""
    probe = subprocess.run(["/usr/bin/python3", "-c", "import icu"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("python3-icu is not installed for /usr/bin/python3 (android_demo/test-host.sh installs it)")
    return "/usr/bin/python3"


@pytest.mark.parametrize("pattern, text, jvm_matches, complaint", [
    # Android's ICU rejects the inline flag the engine once used; HotSpot accepts it.
    (r"(?U)\p{L}+", "héllo", [[0, 5]], "rejects"),
    # java.util.regex's \s is ASCII; ICU's is Unicode: NO-BREAK SPACE matches only under ICU.
    (r"\s+", "a\u00a0b", [], "ICU matches [[1, 2]] where the JVM matches []"),
])
def test_icu_check_fails_where_android_differs(tmp_path, pattern, text, jvm_matches, complaint):
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps({"inputs": [text], "patterns": [{"name": "probe", "pattern": pattern,
                                                                  "matches": [jvm_matches]}]}))
    out = _run([_icu_python(), "android_demo/icu_check.py", str(cases)], timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert complaint in out.stdout, out.stdout


def test_onnxruntime_android_pin_runs_the_packages():
    """phiedge's onnxruntime-android runs what export writes: IR version and operators (export/compat.py)."""
    import onnx

    from export import compat
    from runtime.manifest import version_tuple

    gradle = (ROOT / "android_demo/phiedge/build.gradle.kts").read_text()
    pin = re.search(r'^val onnxruntimeVersion = "([0-9.]+)"', gradle, re.M).group(1)
    manifest = json.loads((ROOT / "runtime/demo/manifest.json").read_text())
    assert version_tuple(pin) >= version_tuple(manifest["min_onnxruntime"]), (pin, manifest["min_onnxruntime"])
    assert version_tuple(pin) >= version_tuple(max(compat.OP_MIN_ONNXRUNTIME.values(), key=version_tuple))
    ir = onnx.load(ROOT / "runtime/demo/model.onnx", load_external_data=False).ir_version
    assert ir <= compat.IR_VERSION, f"the demo package has IR {ir}; onnxruntime {pin} reads up to {compat.IR_VERSION}"
    for name in ("app/build.gradle.kts", "README.md"):  # one pin: the app takes it through phiedge
        text = (ROOT / "android_demo" / name).read_text()
        assert set(re.findall(r"onnxruntime-android:(\d[\d.]*)", text)) <= {pin}, name
    native = ROOT / "android_demo/.host/onnxruntime-android/aar/jni/arm64-v8a/libonnxruntime.so"
    if native.is_file():  # the AAR test-host.sh compiled against
        found = re.search(rb"VERS_(1\.\d+\.\d+)", native.read_bytes()).group(1).decode()
        assert found == pin, f"test-host.sh compiled against onnxruntime-android {found}, phiedge pins {pin}"
