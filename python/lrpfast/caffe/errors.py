"""The one exception type of the Caffe file readers."""
from __future__ import annotations

import os
import stat


class CaffeFormatError(ValueError):
    """A Caffe file (prototxt, caffemodel, binaryproto) is malformed or not what was expected.

    ``CaffeFormatError(path, problem, layer=None)`` formats ``"PATH: layer 'L': PROBLEM"``;
    the parts are kept as attributes ``path``, ``layer`` (or None) and ``problem``. With a
    single argument that argument is the whole message (``path`` is then None).
    """

    def __init__(self, path, problem: str | None = None, *, layer: str | None = None):
        if problem is None:
            self.path, self.layer, self.problem = None, layer, str(path)
            super().__init__(self.problem)
            return
        self.path = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
        self.layer, self.problem = layer, problem
        where = f"{self.path}: layer {layer!r}" if layer is not None else self.path
        super().__init__(f"{where}: {problem}")


def check_regular_file(path) -> str:
    """``path`` as a str when it names a regular file (symlinks followed); else
    ``FileNotFoundError`` (missing) or ``CaffeFormatError`` (a FIFO, device, folder...: reading
    one could block forever or never end). Checked before ``open``, which blocks on a FIFO."""
    path = os.fspath(path)
    mode = os.stat(path).st_mode   # FileNotFoundError / PermissionError name the path
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise CaffeFormatError(path, f"is {kind}; expected a regular file")
    return path
