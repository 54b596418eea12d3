"""The one exception type of the Caffe file readers."""
from __future__ import annotations

import os


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
