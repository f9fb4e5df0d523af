"""Outputs written atomically, and what an interrupted writer leaves behind cleaned up.

Every folder this project writes (model packages, checkpoints, token shards) is built under a hidden
temporary name beside its target and renamed into place when complete:

    parent/.NAME.tmp-PID/   being built by process PID
    parent/.NAME.old-PID/   the previous NAME, moved aside while the new one is renamed in, then deleted
    parent/NAME/            always either the old complete folder or the new complete one

A writer stopped by Ctrl-C or SIGTERM removes its own temporary folder (sigterm_as_interrupt turns SIGTERM
into KeyboardInterrupt so the same cleanup runs); one killed outright (SIGKILL, power loss) cannot, so the
next writer of the same target removes temporary folders whose process is gone (remove_stale).
Standard library only: the torch-free runtime uses it too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

_KINDS = ("tmp", "old")


def sibling(path: Path, kind: str = "tmp", pid: int | None = None) -> Path:
    assert kind in _KINDS, kind
    path = Path(path)
    return path.parent / f".{path.name}.{kind}-{os.getpid() if pid is None else pid}"


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale(path: Path) -> list[Path]:
    """Removes the temporary siblings of `path` left by writers that are no longer running."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.({'|'.join(_KINDS)})-(\d+)$")
    removed = []
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name)
        if match and int(match.group(2)) != os.getpid() and not pid_alive(int(match.group(2))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def make_tmp_dir(path: Path) -> Path:
    """A fresh temporary folder beside `path`, after removing stale ones of dead writers."""
    remove_stale(path)
    tmp = sibling(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, path: Path) -> None:
    """Renames the complete folder `tmp` to `path`; an existing `path` is moved aside first and deleted after,
    so at every moment `path` is either the old folder or the new one (or, for an instant, absent while the
    old one is complete under its .old name)."""
    tmp, path = Path(tmp), Path(path)
    old = None
    if path.exists():
        old = sibling(path, "old")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    """Writes a small text file atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


terminated = False  # set once SIGTERM arrived inside sigterm_as_interrupt (exit with 128 + SIGTERM then)


def _raise_interrupt(signum, frame) -> None:
    global terminated
    terminated = True
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises KeyboardInterrupt, so `except BaseException` cleanups run on `kill` as
    on Ctrl-C. Only the main thread can set a handler; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
