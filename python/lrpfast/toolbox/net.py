"""ToolboxNet: a Net read from an LRP Toolbox plain-text model, taking and returning arrays in
the toolbox's layout (NHWC (N, H, W, D) for CNNs, (N, D) for MLPs) as well as in NCHW.

Layout rule (``layout="auto"``, the default): an input whose per-sample shape is the toolbox's
(H, W, D) is NHWC, one shaped (D, H, W) is NCHW; when both fit (H == W == D) NHWC wins. Every
result with a per-sample (C, H, W) shape (forward outputs, relevance at the input or at any
readout blob) comes back in the layout of the call's input. ``layout="nhwc"`` or ``"nchw"``
fixes the input layout instead. MLPs take (N, D) either way. ``backward_relevance`` (the Caffe
plugin's API) keeps its own NCHW / rawhm conventions.
"""
from __future__ import annotations

import os

import numpy as np

from .. import caffe
from ..net import Net
from .model import ToolboxModel, from_net, read_model, to_caffe, write_model
from .rules import ToolboxRules

__all__ = ["ToolboxNet", "load_net"]

_LAYOUTS = ("auto", "nhwc", "nchw")


class ToolboxNet(Net):
    """A Net built from a toolbox plain-text model (see the module docstring).

    Args:
        model: path of the ``.txt`` model, or a ToolboxModel.
        weights: must be None (the model file holds its weights).
        input_shape: toolbox-layout input shape, (D,) or (H, W, D); default: inferred
            (``toolbox.model.infer_input_shape``; CNNs whose size cannot be inferred raise).
        layout: "auto", "nhwc" or "nchw" (module docstring).
        **kw: Net's keyword arguments (device, memory_limit, ...).
    """

    def __init__(self, model, weights=None, *, input_shape=None, layout: str = "auto", **kw):
        if weights is not None:
            raise ValueError("a toolbox text model holds its own weights; pass weights=None")
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
        tm = model if isinstance(model, ToolboxModel) else read_model(model)
        proto, wdict, info = to_caffe(tm, input_shape)
        super().__init__(caffe.parse_prototxt(proto, path=tm.source), wdict, **kw)
        self.source = tm.source
        self.toolbox_model = tm
        self.toolbox_input_shape = info["input_shape"]
        self.toolbox_modules = info["modules"]   # Caffe layer name per toolbox module index
        self.layout = layout
        self.lrp_presets: dict = {}
        for index, lname in enumerate(info["modules"]):
            setattr(self.layer(lname), "toolbox_index", index)   # the toolbox's module index

    # ------------------------------------------------------------------ layouts
    def _nhwc(self, x) -> bool:
        """True when x (one array, a batch or one sample) is in the toolbox's NHWC layout."""
        if len(self.toolbox_input_shape) != 3 or not isinstance(x, np.ndarray):
            return False
        hwd = self.toolbox_input_shape
        per = x.shape[1:] if x.ndim == 4 else x.shape
        if self.layout != "auto":
            return self.layout == "nhwc" and per == hwd
        return per == hwd

    def _to_caffe(self, x):
        if isinstance(x, dict) or not isinstance(x, np.ndarray):
            if hasattr(x, "__array__") and not isinstance(x, dict) and \
                    not hasattr(x, "__cuda_array_interface__") and not hasattr(x, "__dlpack__"):
                x = np.asarray(x)
            else:
                return x, False
        if self._nhwc(x):
            return np.ascontiguousarray(np.moveaxis(x, -1, -3)), True
        return x, False

    @staticmethod
    def _from_caffe(v, nhwc: bool, spatial_ndim: int):
        """Results back to NHWC: arrays with ``spatial_ndim`` axes whose last three are
        (C, H, W) get C moved last (dicts: each value)."""
        if not nhwc:
            return v
        if isinstance(v, dict):
            return {k: ToolboxNet._from_caffe(a, nhwc, spatial_ndim) for k, a in v.items()}
        if isinstance(v, np.ndarray) and v.ndim == spatial_ndim:
            return np.ascontiguousarray(np.moveaxis(v, -3, -1))
        return v

    def forward(self, x, blobs=None, *, keep=True):
        """Net.forward in either layout (module docstring)."""
        x, nhwc = self._to_caffe(x)
        out = super().forward(x, blobs, keep=keep)
        self._local.last_nhwc = nhwc   # per thread, like forward's input (Net.forward)
        return self._from_caffe(out, nhwc, 4)

    def relevance_multi(self, x, class_sets, rules="epsilon", **kw):
        """Net.relevance_multi in either layout; ``relevance`` comes through here too."""
        x, nhwc = self._to_caffe(x)
        return self._from_caffe(super().relevance_multi(x, class_sets, rules, **kw), nhwc, 5)

    def propagate(self, x, R_top, *, top, rules="epsilon", readout=None):
        """Net.propagate in either layout (R_top in the layout of x)."""
        x, nhwc = self._to_caffe(x)
        if nhwc and isinstance(R_top, np.ndarray) and R_top.ndim == 4:
            R_top = np.ascontiguousarray(np.moveaxis(R_top, -1, -3))
        out = super().propagate(x, R_top, top=top, rules=rules, readout=readout)
        return self._from_caffe(out, nhwc, 4)

    # ------------------------------------------------------------------ toolbox calls
    def set_lrp_parameters(self, layer, lrp_var=None, param=None):
        """The toolbox's ``nn.modules[layer].set_lrp_parameters(lrp_var, param)``: the preset
        that ``lrp(R)`` (without lrp_var/param) uses for that module; ``layer``: the module
        index or the lrpfast layer name."""
        key = layer.name if hasattr(layer, "name") else layer
        ToolboxRules(per_layer={key: (lrp_var, param)}).assign(self.layers, net=self)  # check
        self.lrp_presets[key] = (lrp_var, param)

    def lrp_rules(self, lrp_var=None, param=None) -> ToolboxRules:
        """The ToolboxRules of ``lrp(R, lrp_var, param)`` (the presets when both are None)."""
        return ToolboxRules(lrp_var, param, per_layer=self.lrp_presets)

    def lrp(self, R, lrp_var=None, param=None):
        """The toolbox's ``nn.lrp(R, lrp_var, param)`` after ``forward(x)``.

        R: the relevance at the net's output, shaped like the output of the last forward
        (e.g. ``Y * onehot``); trailing SoftMax layers pass it unchanged, as in the toolbox.
        Returns the input relevance in the layout of the last forward's input (float32)."""
        last = getattr(self._local, "last_input", None)   # this thread's last forward(x)
        nhwc = getattr(self._local, "last_nhwc", False)
        if last is None:
            raise ValueError("lrp(R) explains the input of the last forward(x); call forward "
                             "first")
        top = self.layers[-1]
        while top.type == "Softmax":
            top = self._producer_layer(top.bottoms[0])
        R = np.asarray(R, dtype=np.float32)
        if nhwc and R.ndim == 4:
            R = np.ascontiguousarray(np.moveaxis(R, -1, -3))
        out = Net.propagate(self, last, R, top=top.name, rules=self.lrp_rules(lrp_var, param))
        return self._from_caffe(out, nhwc, 4)

    def write_toolbox(self, path) -> str:
        """Write the net as a toolbox plain-text model (current layout)."""
        return write_model(from_net(self), path)


def load_net(path, *, input_shape=None, layout: str = "auto", **kw) -> ToolboxNet:
    """Load a toolbox plain-text model as a Net (``lrpfast.Net("model.txt")`` does the same for
    files ending in .txt); see ToolboxNet."""
    return ToolboxNet(os.fspath(path) if not isinstance(path, ToolboxModel) else path,
                      input_shape=input_shape, layout=layout, **kw)
