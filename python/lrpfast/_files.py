"""Output files written whole or not at all: a temporary file in the target folder, renamed
into place (``os.replace``, atomic on POSIX) when complete, removed on any error or Ctrl-C.
The rename replaces whatever the folder holds under the target name -- a file of an earlier
run, or a symbolic link, which is never followed."""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading

import numpy as np

_UMASK = None


def _file_mode() -> int:
    """0o666 minus the process umask: the mode ``open`` would give a new file."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return 0o666 & ~_UMASK


_DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_deferred():
    """Hold back SIGINT / SIGTERM until the block has ended: a Ctrl-C during a file's write acts
    right after it, when the file is complete and renamed (or removed), never between creating
    the temporary file and the handler that removes it.

    Python runs signal handlers in the main thread only, whichever thread the kernel hands the
    signal to (an engine or BLAS thread, when the main thread blocks it), so the block swaps in
    a handler that only records the signal, then restores the old one and raises each signal
    it recorded again. Outside the main thread (where handlers cannot be set, and where no
    KeyboardInterrupt is raised) and for a signal that is ignored or whose handler was not set
    from Python, nothing is held back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: h for s in _DEFERRED
           if (h := signal.getsignal(s)) is not None and h != signal.SIG_IGN}
    caught: list = []
    try:
        for s in old:
            signal.signal(s, lambda signum, frame: caught.append(signum))
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in dict.fromkeys(caught):
            signal.raise_signal(s)   # the restored handler runs now (KeyboardInterrupt)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in ``path``'s folder (created if needed); when the block ends
    normally the file there is renamed to ``path``, on any exception it is removed. Ctrl-C
    is held back for the block (a write takes milliseconds) and acts right after it. The
    temporary file is created exclusively (mkstemp: never through a link), named
    ``.<name>.<random>.part``, with the mode a new file would get."""
    with _signals_deferred(), _atomic_path(path) as tmp:
        yield tmp


@contextlib.contextmanager
def _atomic_path(path):
    path = os.fspath(path)
    d, name = os.path.split(path)
    if d:
        os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=d or ".")
    try:
        os.fchmod(fd, _file_mode())   # mkstemp makes 0600
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    """UTF-8 text with ``\\n`` line ends, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def save_png(path, img) -> None:
    """``lrpfast.render.save_png``, atomically."""
    from . import render
    with atomic_path(path) as tmp:
        render.save_png(tmp, img)


def save_npy(path, array) -> None:
    """A float32 ``.npy`` file, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(array, np.float32))
