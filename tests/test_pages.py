"""runtime/pages.py: mapped weight pages handed back after loading, nothing lost, copied-on-write pages kept."""

from __future__ import annotations

import mmap
import os
import re
import sys

import numpy as np
import pytest

from runtime import pages
from runtime.engine import EngineOptions, OrtBackend
from runtime.manifest import load_manifest
from runtime.pipeline import DEFAULT_PACKAGE

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps (Linux only)")


def resident(path) -> int:
    """Bytes of this process's mappings of `path` that are in memory."""
    path, total, ours = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                ours = line.rstrip("\n").endswith(" " + path)
            elif ours and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "weights.bin"
    content = np.random.default_rng(0).integers(0, 256, 64 * mmap.PAGESIZE, np.uint8).tobytes()
    path.write_bytes(content)
    return path, content


def test_released_pages_leave_memory_and_read_back_the_same(data):
    path, content = data
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as view:  # private, like ORT's
        assert bytes(view) == content  # every page read: resident
        assert resident(path) >= len(content)
        assert pages.release(path) >= len(content)
        assert resident(path) == 0
        assert bytes(view) == content  # mapped again from the file


def test_a_mapping_with_a_written_page_is_left_alone(data):
    path, content = data
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as view:
        view[5] = content[5] ^ 0xFF  # copied on write: dropping it would bring the file's byte back
        before = resident(path)
        assert pages.release(path) == 0
        assert view[5] == content[5] ^ 0xFF and resident(path) == before
    assert pages.release(path) == 0  # nothing mapped


def test_a_loaded_package_keeps_no_weight_pages_and_the_same_logits(monkeypatch):
    manifest = load_manifest(DEFAULT_PACKAGE)
    data = manifest.folder / "model.onnx.data"
    ids = [5, 17, 300, 42, 9]
    backend = OrtBackend(manifest, EngineOptions(threads=1))
    assert resident(data) < mmap.PAGESIZE * 64  # what the checks after loading touched, at most
    released = backend.step(ids)
    monkeypatch.setattr("runtime.engine.release", lambda path: 0)
    kept = OrtBackend(manifest, EngineOptions(threads=1))
    assert resident(data) > 0  # without release, the pages the packing read stay
    np.testing.assert_array_equal(released, kept.step(ids))
