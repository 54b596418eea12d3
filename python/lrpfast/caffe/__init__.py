"""Caffe file I/O without Caffe: prototxt, caffemodel and binaryproto (pure Python).

* ``pb``: the message classes (``pb.NetParameter``, ``pb.LayerParameter``, ``pb.BlobProto``,
  ...), built at import time from a subset of Caffe's ``caffe.proto`` with Caffe's field
  numbers (see ``schema.py``).
* ``read_prototxt`` / ``parse_prototxt`` -> ``NetParameter``; ``read_net`` -> ``NetDef``, the
  validated deploy (TEST-phase) view with V1 layers upgraded and inputs collected.
* ``read_caffemodel`` -> ``{layer name: [float32 arrays]}`` by a lean wire-format walker
  (one copy, peak memory about the weights' size); ``read_binaryproto`` -> float32 array.
* Writers: ``write_prototxt``, ``write_caffemodel`` (float / double / legacy shape / V1),
  ``write_binaryproto`` and ``write_model`` for a prototxt + caffemodel pair.

Every malformed file raises ``CaffeFormatError`` (a ``ValueError``) naming the file, the
layer when known, and what was expected.
"""
from __future__ import annotations

import os

from . import schema as pb
from .errors import CaffeFormatError
from .prototxt import (
    LayerDef,
    NetDef,
    parse_prototxt,
    read_net,
    read_prototxt,
    upgrade_v1_layer,
    write_prototxt,
)
from .weights import read_binaryproto, read_caffemodel, write_binaryproto, write_caffemodel

NetParameter = pb.NetParameter
LayerParameter = pb.LayerParameter
BlobProto = pb.BlobProto


def write_model(dir_or_prefix, prototxt_text: str, weights: dict, **caffemodel_options):
    """Write a prototxt + caffemodel pair; return ``(prototxt_path, caffemodel_path)``.

    An existing directory gets ``deploy.prototxt`` and ``weights.caffemodel``; anything else
    is a path prefix for ``PREFIX.prototxt`` and ``PREFIX.caffemodel``. Layer types in the
    caffemodel come from the prototxt; ``caffemodel_options`` go to ``write_caffemodel``.
    """
    base = os.fspath(dir_or_prefix)
    if os.path.isdir(base):
        paths = os.path.join(base, "deploy.prototxt"), os.path.join(base, "weights.caffemodel")
    else:
        paths = base + ".prototxt", base + ".caffemodel"
    net = parse_prototxt(prototxt_text, path=paths[0])
    write_prototxt(prototxt_text, paths[0])
    write_caffemodel(paths[1], weights, net, **caffemodel_options)
    return paths


__all__ = [
    "BlobProto",
    "CaffeFormatError",
    "LayerDef",
    "LayerParameter",
    "NetDef",
    "NetParameter",
    "parse_prototxt",
    "pb",
    "read_binaryproto",
    "read_caffemodel",
    "read_net",
    "read_prototxt",
    "upgrade_v1_layer",
    "write_binaryproto",
    "write_caffemodel",
    "write_model",
    "write_prototxt",
]
