"""lrpfast: fast, faithful Layer-wise Relevance Propagation for Caffe models."""
from __future__ import annotations

from ._loader import _core

__version__: str = _core.__version__
