"""Weight pages ONNX Runtime has finished with after loading, handed back to the system (Linux and Android).

ONNX Runtime memory-maps model.onnx.data (private mappings of the file) and reads all of it while it loads: it
prepacks every MatMulNBits weight into memory of its own, but keeps the mapped originals of what the packing
read, so the pages stay resident and count in the process's RSS. Measured at Phi-4-mini size (onnxruntime 1.32,
int4 b32 package of 2532 MiB): 807 MiB of the file resident after loading, of which the layers' MatMulNBits
scales and zero points (430 MiB, read only to pack), the tied lm_head/embedding matrix (375 MiB with its scales:
the packed copy does the matmul, the mapping serves only the embedding's row gathers).

    resident after load   [ scales zp | scales zp | ... | tied matrix ]   all read once while packing
    after release         [                             | rows gathered ]  faulted back in as they are read

Dropping a clean page of a file mapping loses nothing: the next read maps it again from the file (from the page
cache, usually). Mappings holding any copied-on-write page are left alone. Pages the kernels keep reading come
back by themselves, and count again; on the model above a 300-token prompt and 20 tokens brought back 137 MiB
(embedding rows, at the kernel's fault-around granularity), with the same logits to the bit. Elsewhere (macOS,
Windows: no /proc) release() does nothing.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys

MADV_DONTNEED = 4  # Linux, all architectures Android and desktops run on
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


def _clean_mappings(path: str) -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of `path` that hold no anonymous (copied-on-write) page."""
    spans, current = [], None
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                header = _MAPPING.match(line)
                if header:
                    current = (int(header[1], 16), int(header[2], 16)) if header[3] == path else None
                elif current and line.startswith("Anonymous:"):
                    if int(line.split()[1]) == 0:
                        spans.append(current)
                    current = None
    except (OSError, ValueError, IndexError):
        return []
    return spans


def release(path: str | os.PathLike) -> int:
    """Drops the resident pages of this process's clean mappings of the file at `path`; the bytes of address range
    advised (0 where the system has no /proc or no madvise)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    done = 0
    for start, end in _clean_mappings(os.path.realpath(path)):
        if madvise(start, end - start, MADV_DONTNEED) == 0:
            done += end - start
    return done
