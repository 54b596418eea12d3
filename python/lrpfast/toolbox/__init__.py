"""The LRP Toolbox's stand-alone (python / Matlab) half: plain-text models, data files and the
python ``lrp()`` rule conventions.

    from lrpfast import toolbox
    net = lrpfast.Net("LeNet-5.txt")            # or toolbox.load_net(path, input_shape=...)
    X = toolbox.read_data("data.npy")           # .txt .npy .npz .mat (scipy for .mat)
    Y = net.forward(X)                          # NHWC (N, H, W, D) or NCHW; MLPs (N, D)
    R = net.lrp(Y * onehot, "epsilon", 0.01)    # the toolbox's nn.lrp(R, lrp_var, param)
    net.set_lrp_parameters(0, "flat")           # nn.modules[0].set_lrp_parameters("flat")
    R = net.relevance(X, -1, rules=toolbox.ToolboxRules("alphabeta", 2))
    toolbox.write_model(net, "copy.txt")        # back to the toolbox's text format
    toolbox.write_caffe(net, "out/lenet")       # out/lenet.prototxt + out/lenet.caffemodel

Pickled ``.nn`` models are not read: unpickling runs code from the file.
See ``model`` (format and layer mapping), ``data``, ``rules`` (toolbox mode) and ``net``.
"""
from __future__ import annotations

from .data import DATA_FORMATS, read_data, write_data
from .model import (
    LAYER_NAMES,
    ToolboxFormatError,
    ToolboxLayer,
    ToolboxModel,
    format_model,
    from_net,
    infer_input_shape,
    parse_model,
    read_model,
    to_caffe,
    write_model,
)
from .net import ToolboxNet, load_net
from .rules import VARIANTS, PyAlphaBeta, ToolboxRules, parse_variant

__all__ = ["DATA_FORMATS", "LAYER_NAMES", "VARIANTS", "PyAlphaBeta", "ToolboxFormatError",
           "ToolboxLayer", "ToolboxModel", "ToolboxNet", "ToolboxRules", "format_model",
           "from_net", "infer_input_shape", "load_net", "parse_model", "parse_variant",
           "read_data", "read_model", "to_caffe", "write_caffe", "write_data", "write_model"]


def write_caffe(model, prefix, **caffemodel_options):
    """Write a toolbox model (a ToolboxModel, a path of a .txt model, or a Net of toolbox
    layers) as a Caffe prototxt + caffemodel pair (``lrpfast.caffe.write_model``: a folder gets
    deploy.prototxt + weights.caffemodel, anything else is a prefix). Returns both paths."""
    from .. import caffe
    from ..net import Net

    shape = None
    if isinstance(model, ToolboxNet):
        model, shape = model.toolbox_model, model.toolbox_input_shape
    elif isinstance(model, Net):
        model, shape = from_net(model), _toolbox_shape(model)
    elif not isinstance(model, ToolboxModel):
        model = read_model(model)
    proto, weights, _ = to_caffe(model, shape)
    return caffe.write_model(prefix, proto, weights, **caffemodel_options)


def _toolbox_shape(net) -> tuple:
    s = next(iter(net.inputs.values()))
    return s if len(s) == 1 else (s[1], s[2], s[0])
