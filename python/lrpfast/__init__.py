"""lrpfast: fast, faithful Layer-wise Relevance Propagation for Caffe models.

    import lrpfast
    net = lrpfast.Net("deploy.prototxt", "weights.caffemodel")
    R = net.relevance(x, classes, rules="cmp_alpha2_flat")   # (N, C, H, W) like x
"""
from __future__ import annotations

from ._loader import _core
from . import caffe, detection, diagnostics, render, rules
from .composites import COMPOSITE_NAMES, Composite, composite
from .compat import RelPropOpts  # toolbox options; see lrpfast.compat
from .info import (info, set_num_threads, get_num_threads, set_conv_algorithm, get_conv_algorithm,
                   set_linear_algorithm, get_linear_algorithm, set_memory_reuse, get_memory_reuse,
                   release_memory, set_deterministic, get_deterministic, set_simd, get_simd,
                   _warn_capped_env_threads)
from .layers import LayerError, supported_types
from .net import Net, NonFiniteError, SampleMemoryError
from . import toolbox  # the LRP Toolbox's plain-text models, data files, python rules
from .preprocess import Preprocessed, preprocess
from .pipeline import Preprocessing, run  # whole data sets; lrpfast.dask: across machines
from .sentinels import LAST_INNER_PRODUCT, LOGITS, TOP1, TOP5
from .composites import DEFAULT_RULES

__version__: str = _core.__version__
_warn_capped_env_threads()

__all__ = ["Net", "RelPropOpts", "preprocess", "Preprocessed", "Preprocessing", "run", "render", "diagnostics", "detection",
           "DEFAULT_RULES", "TOP1", "TOP5", "LOGITS", "LAST_INNER_PRODUCT", "Composite",
           "composite", "COMPOSITE_NAMES", "rules", "caffe", "info",
           "set_num_threads", "get_num_threads", "set_conv_algorithm", "get_conv_algorithm",
           "set_linear_algorithm", "get_linear_algorithm", "set_memory_reuse", "get_memory_reuse",
           "release_memory", "set_deterministic", "get_deterministic", "set_simd", "get_simd",
           "supported_types", "LayerError", "NonFiniteError", "SampleMemoryError", "toolbox",
           "__version__"]
