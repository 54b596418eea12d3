"""The one exception type of the Caffe file readers."""
from __future__ import annotations

import os


class CaffeFormatError(ValueError):
    """A Caffe file (prototxt, caffemodel, binaryproto) is malformed or not what was expected.

    The message names the file, the layer when known, and what was expected. The parts are
    also available as attributes: ``path``, ``layer`` (or None) and ``problem``.
    """

    def __init__(self, path, problem: str, *, layer: str | None = None):
        self.path = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
        self.layer = layer
        self.problem = problem
        where = f"{self.path}: layer {layer!r}" if layer is not None else self.path
        super().__init__(f"{where}: {problem}")
