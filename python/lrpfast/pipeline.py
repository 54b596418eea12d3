"""Whole data sets on one machine: :func:`run`, a streaming pipeline.

::

    import lrpfast
    res = lrpfast.run("deploy.prototxt", "val/", weights="net.caffemodel",
                      rules=["cmp_alpha2_flat", "epsilon"], classes=[-1],
                      out="val.zarr", preprocessing=lrpfast.Preprocessing.caffe())
    res.table          # rows: image x rule x class
    # later: the same call resumes where an interrupted run stopped

Three kinds of threads overlap: a pool decodes and pre-processes images (Pillow releases the GIL
while it decodes and resizes), the calling thread runs the engine on one batch after the other,
and a writer thread stores the results (Zarr chunks, the table rows, optional picture files).
The decoders work up to ``prefetch`` batches ahead and the writer queue holds at most two
batches, so memory stays bounded; ``RunResult.engine_wait_s`` is the time the engine waited
for decoded images or for the writer.

Inputs (``images``)
    A folder (its image files, sorted by name), a glob pattern (``"val/*.JPEG"``, ``**``
    allowed), a file list (a text file that is not an image: one ``path [class]`` per line, the
    LRP toolbox's format: class -1 = top-1, -2 = the top-5 summed; blank and ``#`` lines
    skipped; relative paths are taken from ``prefix``, default the list's folder), a single
    image file, a ``(N, h, w, 3)`` uint8 array, or a list / iterable of any of these and of
    single images (``(h, w, 3)`` arrays, PIL images). Images are named by their file name
    without the extension (``image_000012`` for arrays); two images with one name are an error.

Classes (``classes``)
    A list of class selections, each explained for every image: -1 (top-1), -2 (top-5 summed),
    a class index, or ``"listed"`` (the class of the image's file-list line, -1 without one).
    Default: ``["listed"]`` for a file list, else ``[-1]``.

Store (``out``, a Zarr group; needs ``zarr``)
    ``relevance/<rule>``: float32 or float16 ``(N, K, C, H, W)`` (K class selections), chunked
    one batch of images per chunk, compressed with Zarr's default codec; ``images.txt``: the
    image names, one a line, in store order; ``table.csv`` (or ``table=`` a ``.csv`` /
    ``.parquet`` path; Parquet needs pyarrow). Completion is recorded per chunk: after a
    chunk's arrays are written, the chunk's table rows are written to
    ``lrpfast_chunks/<index>.json`` under a temporary name and renamed into place. A chunk
    without its marker counts as not done: a rerun with the same arguments (``resume=True``,
    the default) recomputes exactly the chunks without a marker (overwriting whatever part of
    them an interrupted run left), so an interrupted run resumed gives the store of an
    uninterrupted one, and nothing done is computed twice. The store's attributes record the
    run's settings; resuming with different settings is an error (``resume=False`` starts
    over). A non-empty folder that is not a Zarr store is never overwritten.

Table (one row per image x rule x class selection; ``RunResult.table``)
    ``image`` (name), ``path`` (the file, empty for arrays), ``index`` (in the store), ``rule``,
    ``selection`` (the class selection asked for), ``class`` (the explained class: the index,
    the best class for -1, ``top5`` for -2), ``logit`` (the value of the layer where relevance
    starts for that class; for ``top5`` the sum of the five), ``top5`` (the five best classes
    there, space-separated, best first), ``relevance_sum`` (of the input relevance), ``mu``,
    ``mu_w``, ``box_fraction`` (Kohlbrenner et al. 2020, :mod:`lrpfast.metrics`; with
    ``boxes``) and ``error`` (empty, or why the image failed; then the numbers are empty and its
    store entries zero).

Boxes (``boxes``)
    A folder of PASCAL VOC / ILSVRC XML files named ``<image name>.xml``, or a dict
    ``{image name: XML path}``. The mask of an image and class is the union of the boxes of the
    objects named ``class_names[class]`` (all objects when ``class_names`` is not given, or for
    ``top5``), mapped through the pre-processing (:meth:`lrpfast.Preprocessed.boxes_to_input`).
    An image without an XML file gets empty μ columns.
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import glob
import hashlib
import io
import json
import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._files import atomic_path, write_text
from ._loader import _core
from .preprocess import Preprocessed, preprocess as _preprocess

__all__ = ["run", "Preprocessing", "RunResult", "collect_images", "TABLE_COLUMNS",
           "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".gif", ".webp")
TABLE_COLUMNS = ("image", "path", "index", "rule", "selection", "class", "logit", "top5",
                 "relevance_sum", "mu", "mu_w", "box_fraction", "error")
#: Folder of the per-chunk completion markers inside a store.
MARKERS = "lrpfast_chunks"
STORE_FORMAT = 1

#: ImageNet statistics of torchvision's models (RGB, on 0..1 values).
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


# ============================================================================ pre-processing
@dataclass(frozen=True, eq=False)
class Preprocessing:
    """How a photo becomes the network input: :func:`lrpfast.preprocess` with these arguments
    (``x = (pixels * scale - mean) / std``, pixels 0..255 in ``channel_order``).

    ``mode`` / ``size``: ``"crop"`` (short side to ``size``, default just covering the input,
    then the centre), ``"pad"`` (the LRP toolbox: long side to ``size``, centre crop / edge
    pad) or ``"resize"``. ``mean``: None, a per-channel tuple or a ``(C, Hm, Wm)`` mean image.
    ``draft``: let Pillow decode a JPEG at 1/2, 1/4 or 1/8 scale (in the DCT domain, several
    times faster for big photos) where the decoded image still covers the size the resize
    needs; the antialiased bilinear resize then does the rest (less than 2x). Off by default:
    the pixels then differ slightly from a full decode.

    Presets: :meth:`caffe` and :meth:`torchvision`."""

    mode: str = "crop"
    size: Optional[int] = None
    mean: Any = None
    std: Any = None
    channel_order: str = "bgr"
    scale: float = 1.0
    draft: bool = False

    @classmethod
    def caffe(cls, mean=(104.0, 117.0, 123.0), mode: str = "crop", size: Optional[int] = None,
              draft: bool = False) -> "Preprocessing":
        """Caffe models: BGR planes, values 0..255 minus ``mean`` (BGR; default the ImageNet
        mean pixel 104, 117, 123; ``None``: raw values)."""
        return cls(mode=mode, size=size, mean=mean, channel_order="bgr", draft=draft)

    @classmethod
    def torchvision(cls, resize: int = 256, mean=TORCHVISION_MEAN, std=TORCHVISION_STD,
                    draft: bool = False) -> "Preprocessing":
        """torchvision's ImageNet transform (``Resize(resize)``, ``CenterCrop(input size)``,
        ``ToTensor()``, ``Normalize(mean, std)``): RGB, values / 255, minus the per-channel
        ``mean``, divided by ``std``; the short side is resized (bilinear, antialiased like
        Pillow) to ``resize`` with the long side rounded (torchvision truncates: at most one
        pixel apart) and the centre crop starts at ``(len - S) // 2``."""
        return cls(mode="crop", size=resize, mean=tuple(mean), std=tuple(std),
                   channel_order="rgb", scale=1.0 / 255.0, draft=draft)

    @classmethod
    def named(cls, name: str, **kw) -> "Preprocessing":
        """``"caffe"`` or ``"torchvision"`` (the presets) with keyword overrides."""
        if name not in ("caffe", "torchvision"):
            raise ValueError(f"preprocessing: 'caffe' or 'torchvision', got {name!r}")
        return getattr(cls, name)(**kw)

    def describe(self) -> dict:
        """The settings as JSON-able values (a mean image as its SHA-1)."""
        def v(a):
            if a is None or np.ndim(a) == 0:
                return None if a is None else float(a)
            arr = np.asarray(a, np.float32)
            return [float(t) for t in arr] if arr.ndim == 1 else \
                "sha1:" + hashlib.sha1(arr.tobytes()).hexdigest()
        return {"mode": self.mode, "size": self.size, "mean": v(self.mean), "std": v(self.std),
                "channel_order": self.channel_order, "scale": float(self.scale),
                "draft": bool(self.draft)}

    def __call__(self, image, input_size) -> Preprocessed:
        """One image (path, PIL image, array) -> :class:`lrpfast.Preprocessed`."""
        H, W = int(input_size[0]), int(input_size[1])
        orig = None
        if self.draft and isinstance(image, (str, os.PathLike)):
            image, orig = self._drafted(os.fspath(image), H, W)
        p = _preprocess(image, (H, W), mode=self.mode, base=self.size, mean=self.mean,
                        std=self.std, channel_order=self.channel_order, scale=self.scale)
        if orig is not None and orig != p.photo_size:   # geometry of the original photo
            (h, w), (h0, w0) = p.photo_size, orig
            p.photo_size = orig
            p.scale = (p.scale[0] * h / h0, p.scale[1] * w / w0)
        return p

    def _drafted(self, path: str, H: int, W: int):
        """(PIL image decoded at a reduced JPEG scale, original (h, w)) or (path, None)."""
        from PIL import Image
        if not os.path.isfile(path):
            return path, None
        im = Image.open(path)
        if im.format != "JPEG":
            im.close()
            return path, None
        w0, h0 = im.size
        if self.mode == "resize":
            need = (W, H)
        else:
            if self.mode == "pad":
                f = (self.size or max(H, W)) / max(w0, h0)
            else:
                f = max(H / h0, W / w0) if self.size is None else self.size / min(w0, h0)
            need = (math.ceil(w0 * f), math.ceil(h0 * f))
        im.draft("RGB", need)   # the smallest DCT scale that still covers the resize
        im.load()
        return im, (h0, w0)


# ============================================================================ inputs
@dataclass
class _Item:
    name: str
    source: Any          # a path or an image
    listed: int = -1     # the class of its file-list line
    path: str = ""


def _is_image_file(p: str) -> bool:
    return p.lower().endswith(IMAGE_EXTENSIONS)


def _read_list(path: str, prefix) -> List[Tuple[str, int]]:
    from .explain import read_filelist
    if prefix is None:
        prefix = os.path.dirname(os.path.abspath(path))
    return [(p, c) for p, c, _ in read_filelist(path, prefix)]


def collect_images(images, prefix: Optional[str] = None) -> List[_Item]:
    """``images`` (see the module docstring) -> the run's items, in order. ValueError for an
    input that names nothing, or for two images with one name."""
    entries: List[Tuple[Any, int, str]] = []   # (source, listed class, path)

    def add_path(p: str):
        if os.path.isdir(p):
            files = sorted(os.path.join(p, f) for f in os.listdir(p) if _is_image_file(f))
            if not files:
                raise ValueError(f"images: folder {p} holds no image files "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
            entries.extend((f, -1, f) for f in files)
        elif os.path.isfile(p) and not _is_image_file(p):
            entries.extend((f, c, f) for f, c in _read_list(p, prefix))
        elif any(ch in p for ch in "*?[") and not os.path.exists(p):
            files = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f))
            if not files:
                raise ValueError(f"images: the pattern {p} matches no file")
            entries.extend((f, -1, f) for f in files)
        else:   # an image file (a missing one fails as that image, not the run)
            entries.append((p, -1, p))

    if isinstance(images, (str, os.PathLike)):
        add_path(os.fspath(images))
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        entries.extend((images[i], -1, "") for i in range(images.shape[0]))
    else:
        for im in images:
            if isinstance(im, (str, os.PathLike)):
                add_path(os.fspath(im))
            else:
                entries.append((im, -1, ""))
    items: List[_Item] = []
    seen: Dict[str, str] = {}
    for i, (src, cls, path) in enumerate(entries):
        name = os.path.splitext(os.path.basename(path))[0] if path else f"image_{i:06d}"
        if name in seen:
            raise ValueError(f"images: {path or name} and {seen[name] or name} have one name "
                             f"'{name}' (outputs are named by it)")
        seen[name] = path
        items.append(_Item(name, src, cls, path))
    return items


# ============================================================================ engine
def _rule_list(rules) -> List[Tuple[str, Any]]:
    """rules: a name, a list of names, or {name: rules argument} -> [(name, rules)]."""
    if isinstance(rules, dict):
        out = list(rules.items())
    elif isinstance(rules, str):
        out = [(rules, rules)]
    else:
        out = [(r, r) if isinstance(r, str) else (str(r), r) for r in rules]
    if not out:
        raise ValueError("rules: empty")
    for name, _ in out:
        if not name or "/" in name:
            raise ValueError(f"rules: {name!r} cannot name a store array")
    return out


def _class_list(classes, listed: bool) -> List[Any]:
    if classes is None:
        return ["listed"] if listed else [-1]
    if isinstance(classes, (int, np.integer, str)):
        classes = [classes]
    out: List[Any] = []
    for c in classes:
        if c == "listed":
            out.append("listed")
        elif isinstance(c, (int, np.integer)) and int(c) >= -2:
            out.append(int(c))
        else:
            raise ValueError(f"classes: -1 (top-1), -2 (top-5), a class index >= 0 or "
                             f"'listed'; got {c!r}")
    return out


class Engine:
    """One net and the run's settings: ``compute(x, listed)`` for a batch.

    ``compute`` returns ``(top (n, M) float32, scores (n, M') float32, {rule: (K, n, C, H, W)
    float32})``: the values of the layer where relevance starts, the net's output (what the
    toolbox's top-10 lists) and the input relevance of each rule and class selection."""

    def __init__(self, net, rules, classes, top=None):
        self.net, self.rules, self.classes, self.top = net, rules, classes, top
        self.top_blob = net.top_layer(top).tops[0]
        self.out_blob = self.top_blob if top is not None else net.outputs[0]
        shape = next(iter(net.inputs.values()))
        if len(net.inputs) != 1 or len(shape) != 3:
            raise ValueError(f"{net.source}: the pipeline needs a net with one (C, H, W) "
                             f"input, got {dict(net.inputs)}")
        self.input_shape = tuple(int(s) for s in shape)

    def class_sets(self, listed: Sequence[int]):
        return [list(listed) if c == "listed" else c for c in self.classes]

    def compute(self, x, listed):
        n = x.shape[0]
        blobs = list(dict.fromkeys([self.top_blob, self.out_blob]))
        f = self.net.forward(x, blobs=blobs)
        top = np.asarray(f[self.top_blob], np.float32).reshape(n, -1)
        scores = np.asarray(f[self.out_blob], np.float32).reshape(n, -1)
        sets = self.class_sets(listed)
        # forward's own copy of the input: the relevance passes reuse its activations instead of
        # computing the forward pass again (as backward_relevance does after forward)
        kept = getattr(self.net._local, "last_input", None) or x
        rel = {name: self.net.relevance_multi(kept, sets, rules=r, top=self.top, progress=False)
               for name, r in self.rules}
        return top, scores, rel


def explained(c: int, top_row) -> Tuple[str, float]:
    """(class tag, logit) of selection ``c`` for one image's top-layer values."""
    if c == -2:
        order = np.argsort(-top_row, kind="stable")[:5]
        return "top5", float(np.sum(top_row[order], dtype=np.float64))
    k = int(np.argmax(top_row)) if c == -1 else int(c)
    return str(k), float(top_row[k]) if k < top_row.size else float("nan")


# ============================================================================ the plan
@dataclass
class Plan:
    """Everything a chunk needs, picklable (sent to Dask workers): the model files, settings,
    items and the store. ``chunk(i)`` is images ``[i * batch, (i + 1) * batch)``."""

    model: str
    weights: Optional[str]
    rules: List[Tuple[str, Any]]
    classes: List[Any]
    top: Any
    preprocessing: Preprocessing
    items: List[_Item]
    batch: int
    out: Optional[str]
    dtype: str
    boxes: Any = None
    class_names: Optional[List[str]] = None
    threads: Optional[int] = None
    net_options: dict = field(default_factory=dict)

    @property
    def n_chunks(self) -> int:
        return -(-len(self.items) // self.batch)

    def chunk(self, i: int) -> Tuple[int, int]:
        return i * self.batch, min(len(self.items), (i + 1) * self.batch)

    def engine_key(self):
        return (os.path.abspath(self.model), os.path.abspath(self.weights or ""),
                repr(sorted(self.net_options.items())), self.threads)

    def describe(self, input_shape) -> dict:
        def stat(p):
            if not p or not os.path.isfile(p):
                return None
            s = os.stat(p)
            return [os.path.abspath(p), s.st_size, s.st_mtime_ns]
        names = hashlib.sha1("\n".join(it.name for it in self.items).encode()).hexdigest()
        return {"format": STORE_FORMAT, "model": stat(self.model), "weights": stat(self.weights),
                "rules": [n for n, _ in self.rules], "classes": self.classes,
                "top": None if self.top is None else str(self.top),
                "preprocessing": self.preprocessing.describe(), "n": len(self.items),
                "images_sha1": names, "batch": self.batch, "dtype": self.dtype,
                "input_shape": list(input_shape),
                "boxes": None if self.boxes is None else str(self.boxes)}


def load_net(plan: Plan):
    from .net import Net
    if plan.threads:
        from .info import set_num_threads
        set_num_threads(plan.threads)
    return Net(plan.model, plan.weights, **plan.net_options)


# ============================================================================ one chunk
@dataclass
class _Decoded:
    item: _Item
    pre: Optional[Preprocessed] = None
    error: str = ""
    boxes: Any = None     # the annotation dict, or None


def decode(plan: Plan, item: _Item, input_shape) -> _Decoded:
    """Read and pre-process one image (and its boxes); a failure is recorded, not raised."""
    if item.path and not os.path.isfile(item.path):
        return _Decoded(item, error="image file not found")
    try:
        pre = plan.preprocessing(item.source, input_shape[1:])
    except Exception as e:   # noqa: BLE001 - Pillow raises many types for bad files
        return _Decoded(item, error=f"cannot read image: {_describe(e)}")
    if pre.x.shape != tuple(input_shape):
        return _Decoded(item, error=f"pre-processing gives {pre.x.shape}, the net takes "
                                    f"{tuple(input_shape)}")
    return _Decoded(item, pre, boxes=_annotation(plan, item))


def _annotation(plan: Plan, item: _Item):
    if plan.boxes is None:
        return None
    from .boxes import read_annotation
    if isinstance(plan.boxes, dict):
        p = plan.boxes.get(item.name)
    else:
        p = os.path.join(os.fspath(plan.boxes), item.name + ".xml")
    if p is None or not os.path.isfile(p):
        return None
    return read_annotation(p)


def _describe(e: BaseException) -> str:
    from .explain import _describe as d
    return d(e)


@dataclass
class ChunkResult:
    """One computed chunk: its decoded images and either the engine's outputs (``top``,
    ``scores``, ``rel``, for the images without ``error``) or the batch's ``error``."""

    index: int
    decoded: List[_Decoded]
    top: Any = None
    scores: Any = None
    rel: Any = None
    error: str = ""

    @property
    def ok(self) -> List[int]:
        return [i for i, d in enumerate(self.decoded) if not d.error]


def compute_chunk(engine: Engine, index: int, decoded: List[_Decoded]) -> ChunkResult:
    res = ChunkResult(index, decoded)
    ok = res.ok
    if not ok:
        return res
    x = np.stack([decoded[i].pre.x for i in ok])   # type: ignore[union-attr]
    try:
        res.top, res.scores, res.rel = engine.compute(x, [decoded[i].item.listed for i in ok])
    except Exception as e:   # noqa: BLE001 - any failure (memory, NaN...) fails this batch
        res.error = f"relevance failed: {_describe(e)}"
    return res


def chunk_rows(plan: Plan, engine: Engine, res: ChunkResult) -> List[dict]:
    """The table rows of a computed chunk (see the module docstring)."""
    from .metrics import box_fraction, box_mask, mu_and_mu_w
    a, _ = plan.chunk(res.index)
    rows = []
    ok = {i: j for j, i in enumerate(res.ok)}
    for i, d in enumerate(res.decoded):
        j = ok.get(i)
        err = d.error or (res.error if j is not None else "")
        for rn, _ in plan.rules:
            for k, c in enumerate(plan.classes):
                sel = d.item.listed if c == "listed" else c
                row = {"image": d.item.name, "path": d.item.path, "index": a + i, "rule": rn,
                       "selection": str(c), "class": "", "logit": "", "top5": "",
                       "relevance_sum": "", "mu": "", "mu_w": "", "box_fraction": "",
                       "error": err}
                if not err:
                    t = res.top[j]
                    row["class"], row["logit"] = explained(sel, t)
                    row["top5"] = " ".join(map(str, np.argsort(-t, kind="stable")[:5]))
                    R = res.rel[rn][k, j]
                    row["relevance_sum"] = float(np.sum(R, dtype=np.float64))
                    if d.boxes is not None:
                        H, W = R.shape[-2:]
                        mask = box_mask(d.pre.boxes_to_input(   # type: ignore[union-attr]
                            _class_boxes(d.boxes, str(row["class"]), plan.class_names)), (H, W))
                        row["mu"], row["mu_w"] = mu_and_mu_w(R, mask)
                        row["box_fraction"] = box_fraction(mask)
                rows.append(row)
    return rows


def _class_boxes(ann, tag: str, class_names) -> np.ndarray:
    """The boxes of the objects of class ``tag`` (all objects without class names / top5)."""
    from .boxes import boxes_for_class
    if class_names and tag.isdigit() and int(tag) < len(class_names):
        return boxes_for_class(ann, class_names[int(tag)])
    return np.asarray([o["box"] for o in ann["objects"]], np.int64).reshape(-1, 4)


def deliver(res: ChunkResult, on_image=None) -> List[Tuple[str, str]]:
    """Call ``on_image(decoded, top_row, scores_row, {rule: (K, C, H, W)})`` for each computed
    image of a chunk; returns ``[(label, message)]`` of the images that failed (to decode, in
    the engine, or in ``on_image``), in order."""
    ok = {i: j for j, i in enumerate(res.ok)}
    errors = []
    for i, d in enumerate(res.decoded):
        label = d.item.path or d.item.name
        j = ok.get(i)
        if d.error or res.error:
            errors.append((label, d.error or res.error))
        elif on_image is not None:
            try:
                on_image(d, res.top[j], res.scores[j], {rn: R[:, j] for rn, R in res.rel.items()})
            except Exception as e:   # noqa: BLE001 - this image fails, the others go on
                errors.append((label, f"cannot write outputs: {_describe(e)}"))
    return errors


class _Chain:
    """Call several ``on_image`` hooks in turn (picklable, for Dask)."""

    def __init__(self, *fns):
        self.fns = [f for f in fns if f is not None]

    def __call__(self, *args):
        for f in self.fns:
            f(*args)


def image_hook(plan: Plan, on_image=None, pictures=None, formats: str = "png,overlay"):
    """``on_image`` plus, with ``pictures`` (a folder), the heatmaps command's picture files
    there: ``<image>_<rule>_c<class>_heatmap.png`` / ``_overlay.png`` (``formats``: any of
    png, overlay, rawhm, npy, input, top10; see :mod:`lrpfast.explain`)."""
    if pictures is None:
        return on_image
    from .explain import _HeatmapFiles
    from .render import DEFAULT_CMAP, DEFAULT_PERCENTILE
    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in ("png", "overlay", "rawhm", "npy", "input", "top10")]
    if bad:
        raise ValueError(f"picture_formats: unknown {', '.join(bad)} (png, overlay, rawhm, npy, "
                         f"input, top10)")
    files = _HeatmapFiles(os.fspath(pictures), fmts, plan.classes, [], DEFAULT_CMAP,
                          "symmetric", DEFAULT_PERCENTILE)
    return _Chain(files, on_image)


def chunk_relevance(plan: Plan, engine: Engine, res: ChunkResult) -> Dict[str, np.ndarray]:
    """{rule: (n, K, C, H, W)} in the store's dtype; failed images are zero. float16 is
    rounded natively (numpy's astype bit for bit, about 10x faster: F16C)."""
    a, b = plan.chunk(res.index)
    K = len(plan.classes)
    ok = res.ok
    out = {}
    for rn, _ in plan.rules:
        if res.rel is None:
            out[rn] = np.zeros((b - a, K) + engine.input_shape, plan.dtype)
            continue
        r = np.ascontiguousarray(res.rel[rn], np.float32)   # (K, n_ok, C, H, W)
        r = _core.to_float16(r) if plan.dtype == "float16" else r
        if len(ok) == b - a:
            out[rn] = r.transpose(1, 0, 2, 3, 4)
        else:
            arr = np.zeros((b - a, K) + engine.input_shape, plan.dtype)
            arr[ok] = r.transpose(1, 0, 2, 3, 4)
            out[rn] = arr
    return out


# ============================================================================ the store
def _zarr():
    try:
        import zarr
    except ImportError:
        raise ImportError("out= (a Zarr store) needs zarr: pip install 'lrpfast[dask]' or "
                          "pip install zarr") from None
    return zarr


def _create_array(group, name, shape, chunks, dtype):
    if hasattr(group, "create_array"):   # zarr >= 3
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype,
                                  fill_value=0, overwrite=True)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                                overwrite=True)


class Store:
    """The Zarr store of a run (see the module docstring): ``open`` creates or checks it,
    ``write_chunk`` stores one chunk and then its marker, ``rows`` reads the table back."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.markers = os.path.join(self.path, MARKERS)

    @classmethod
    def open(cls, plan: Plan, input_shape, resume: bool) -> "Store":
        zarr = _zarr()
        st = cls(plan.out or "")
        meta = plan.describe(input_shape)
        if resume and os.path.isdir(st.markers):
            group = zarr.open_group(st.path, mode="r")
            old = dict(group.attrs).get("lrpfast")
            if old != json.loads(json.dumps(meta)):
                diff = sorted(k for k in set(meta) | set(old or {})
                              if (old or {}).get(k) != json.loads(json.dumps(meta)).get(k))
                raise ValueError(f"store {st.path} holds a run with other settings (differs "
                                 f"in: {', '.join(diff)}); pass another out, or resume=False "
                                 f"to start over")
            return st
        if os.path.isdir(st.path) and os.listdir(st.path) and not any(
                os.path.exists(os.path.join(st.path, f)) for f in ("zarr.json", ".zgroup")):
            raise ValueError(f"out: {st.path} is a non-empty folder that is not a Zarr "
                             f"store; refusing to overwrite it")
        group = zarr.open_group(st.path, mode="w")
        rel = group.create_group("relevance")
        n, K = len(plan.items), len(plan.classes)
        for rn, _ in plan.rules:
            _create_array(rel, rn, (n, K) + tuple(input_shape),
                          (plan.batch, K) + tuple(input_shape), plan.dtype)
        write_text(os.path.join(st.path, "images.txt"),
                   "".join(it.name + "\n" for it in plan.items))
        group.attrs["lrpfast"] = meta
        os.makedirs(st.markers, exist_ok=True)   # last: a store with this folder is complete
        return st

    def marker(self, i: int) -> str:
        return os.path.join(self.markers, f"{i:08d}.json")

    def done(self) -> set:
        return {int(f[:-5]) for f in os.listdir(self.markers)
                if f.endswith(".json") and f[:-5].isdigit()}

    def write_chunk(self, plan: Plan, index: int, rel: Dict[str, np.ndarray], rows) -> None:
        zarr = _zarr()
        a, b = plan.chunk(index)
        group = zarr.open_group(self.path, mode="r+")
        for rn, arr in rel.items():
            dst = group["relevance"][rn]
            if hasattr(dst, "with_config"):
                # store every chunk as it comes: zarr 3 otherwise first compares each chunk
                # with the fill value, a pass over it (zarr 2 writes them all by default)
                dst = dst.with_config({"write_empty_chunks": True})
            dst[a:b] = arr
        write_text(self.marker(index), json.dumps(rows))

    def rows(self, n_chunks: int) -> List[dict]:
        rows = []
        for i in range(n_chunks):
            with open(self.marker(i), encoding="utf-8") as f:
                rows += json.load(f)
        return rows


def write_table(path: str, rows: List[dict]) -> None:
    """The table as CSV, or Parquet for a ``.parquet`` path (needs pyarrow), atomically."""
    if path.endswith(".parquet"):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"table {path}: Parquet needs pyarrow (pip install pyarrow); "
                              f"a .csv path needs nothing") from None
        cols = {c: [r[c] for r in rows] for c in TABLE_COLUMNS}
        for c in ("logit", "relevance_sum", "mu", "mu_w", "box_fraction"):
            cols[c] = [float("nan") if v == "" else float(v) for v in cols[c]]
        with atomic_path(path) as tmp:
            pq.write_table(pa.table(cols), tmp)
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, TABLE_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    write_text(path, buf.getvalue())


# ============================================================================ progress
class Progress:
    """``images [####......] 120/1000 35.2 img/s ETA 0:00:25`` on stderr (when enabled;
    default: when stderr is a terminal)."""

    def __init__(self, total, enabled, label="images"):
        self.total, self.done, self.label = total, 0, label
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.enabled = self.enabled and total > 0
        self.t0 = time.perf_counter()

    def step(self, k=1):
        self.done += k
        if self.enabled:
            w = 30
            f = int(w * self.done / max(self.total, 1))
            dt = time.perf_counter() - self.t0
            rate = self.done / dt if dt > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            sys.stderr.write(f"\r{self.label} [{'#' * f}{'.' * (w - f)}] {self.done}/"
                             f"{self.total} {rate:.1f} img/s ETA "
                             f"{time.strftime('%H:%M:%S', time.gmtime(eta))}")
            sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ============================================================================ run
@dataclass
class RunResult:
    """What :func:`run` did: ``table`` (the rows, all chunks of the store, in order),
    ``computed`` (images computed now; resumed chunks are not), ``failed`` (images with an
    error), ``seconds``, ``engine_s`` (time in the engine), ``engine_wait_s`` (time the engine
    waited for decoding or writing), ``store`` (the path, or None)."""

    table: List[dict]
    computed: int
    failed: int
    seconds: float
    engine_s: float
    engine_wait_s: float
    store: Optional[str]
    chunks_computed: int = 0
    task_s: float = 0.0       # lrpfast.dask.run: task wall time summed over the tasks
    task_cpu_s: float = 0.0   # and the workers' CPU time during them

    @property
    def images_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def make_plan(model, images, *, weights=None, rules=None, classes=None, top=None,
              preprocessing=None, batch=16, out=None, dtype="float32", boxes=None,
              class_names=None, threads=None, prefix=None, net_options=None) -> Plan:
    """Check the arguments of :func:`run` and return its :class:`Plan`."""
    from .composites import DEFAULT_RULES
    if isinstance(preprocessing, str):
        preprocessing = Preprocessing.named(preprocessing)
    if preprocessing is None:
        preprocessing = Preprocessing.caffe()
    if not isinstance(preprocessing, Preprocessing):
        raise TypeError(f"preprocessing: a Preprocessing or 'caffe' / 'torchvision', got "
                        f"{type(preprocessing).__name__}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype: 'float32' or 'float16', got {dtype!r}")
    if not 1 <= int(batch) <= 1024:
        raise ValueError(f"batch must be in 1..1024, got {batch}")
    items = collect_images(images, prefix)
    listed = isinstance(images, (str, os.PathLike)) and os.path.isfile(images) and \
        not _is_image_file(os.fspath(images))
    if boxes is not None and not isinstance(boxes, dict) and not os.path.isdir(boxes):
        raise ValueError(f"boxes: {boxes} is not a folder of XML files")
    if isinstance(class_names, (str, os.PathLike)):
        from .explain import read_synsets
        class_names = [(l.split() or [""])[0] for l in read_synsets(class_names)]
    return Plan(os.fspath(model), None if weights is None else os.fspath(weights),
                _rule_list(rules if rules is not None else DEFAULT_RULES),
                _class_list(classes, listed), top, preprocessing, items, int(batch),
                None if out is None else os.fspath(out), dtype, boxes,
                None if class_names is None else list(class_names), threads,
                dict(net_options or {}))


def run(model, images, *, weights=None, rules=None, classes=None, out=None, table=None,
        batch: int = 16, preprocessing=None, dtype: str = "float32", top=None, boxes=None,
        class_names=None, resume: bool = True, progress=None, threads: Optional[int] = None,
        decode_workers: Optional[int] = None, prefetch: int = 2, prefix=None, on_image=None,
        on_error=None, net=None, net_options=None, pictures=None,
        picture_formats: str = "png,overlay") -> RunResult:
    """Explain a whole data set: decode in the background, compute, write in the background.

    Parameters
    ----------
    model, weights : the deploy prototxt and caffemodel, or an ``.onnx`` file (no weights)
    images : a folder, glob, file list, image file, ``(N, h, w, 3)`` array or a list of these
        (module docstring)
    rules : a composite name, a list of names, or ``{name: rules}`` (default
        ``lrpfast.DEFAULT_RULES``)
    classes : list of class selections (-1, -2, index, ``"listed"``); default ``[-1]``, or
        ``["listed"]`` for a file list
    out : a Zarr store folder (created, or resumed); None: no store, no resume
    table : the table's path (``.csv`` or ``.parquet``); default ``<out>/table.csv``
    batch : images per engine pass and per store chunk
    preprocessing : :class:`Preprocessing`, ``"caffe"`` (default) or ``"torchvision"``
    dtype : ``"float32"`` or ``"float16"`` (the store's; float16 flushes values of magnitude
        below 6e-8 to zero)
    top : where relevance starts (``Net.top_layer``)
    boxes, class_names : for μ / μ_w (module docstring); class_names may be a synset file (the
        first word of each line)
    resume : continue a store of the same settings (default); False starts over
    progress : progress bar with images/s and ETA (None: when stderr is a terminal)
    threads : engine threads (``lrpfast.set_num_threads``; None: unchanged)
    decode_workers : decoding threads (default ``min(4, CPUs)``)
    prefetch : batches decoded ahead of the engine
    on_image : called in the writer thread per computed image with the decoded image, its
        top-layer values, the net's output and ``{rule: relevance}`` (``(K, C, H, W)`` each;
        the heatmaps command writes its files here); may raise (that image then fails)
    on_error : called with ``(label, message)`` per failed image (default: one
        ``lrpfast: error:`` line on stderr)
    net : an already loaded :class:`lrpfast.Net` of ``model`` (else it is loaded)
    pictures : a folder for picture files of each image, rule and class (optional):
        ``<image>_<rule>_c<class>_heatmap.png`` and ``_overlay.png`` as ``lrpfast heatmaps``
        writes them; ``picture_formats`` picks them (png, overlay, rawhm, npy, input, top10)

    Returns
    -------
    RunResult
    """
    t0 = time.perf_counter()
    plan = make_plan(model, images, weights=weights, rules=rules, classes=classes, top=top,
                     preprocessing=preprocessing, batch=batch, out=out, dtype=dtype,
                     boxes=boxes, class_names=class_names, threads=threads, prefix=prefix,
                     net_options=net_options)
    on_image = image_hook(plan, on_image, pictures, picture_formats)
    if net is None:
        net = load_net(plan)
    elif threads:
        from .info import set_num_threads
        set_num_threads(threads)
    engine = Engine(net, plan.rules, plan.classes, plan.top)
    store = Store.open(plan, engine.input_shape, resume) if plan.out else None
    done = store.done() if store else set()
    todo = [i for i in range(plan.n_chunks) if i not in done]
    bar = Progress(sum(plan.chunk(i)[1] - plan.chunk(i)[0] for i in todo), progress)
    on_error = on_error or (lambda label, msg: print(f"lrpfast: error: {label}: {msg}",
                                                     file=sys.stderr))
    stats: Dict[str, Any] = {"failed": 0, "computed": 0, "engine": 0.0, "wait": 0.0}
    rows_now: Dict[int, List[dict]] = {}

    def write(res: ChunkResult):
        rows = chunk_rows(plan, engine, res)
        errors = deliver(res, on_image)
        for label, msg in errors:
            on_error(label, msg)
        if store is not None:
            store.write_chunk(plan, res.index, chunk_relevance(plan, engine, res), rows)
        else:
            rows_now[res.index] = rows
        stats["failed"] += len(errors)
        stats["computed"] += len(res.decoded)
        bar.step(len(res.decoded))

    _stream(plan, engine, todo, write, decode_workers, prefetch, stats)
    bar.close()
    if store is not None:
        rows = store.rows(plan.n_chunks)
        write_table(os.fspath(table) if table else os.path.join(store.path, "table.csv"), rows)
    else:
        rows = [r for i in sorted(rows_now) for r in rows_now[i]]
        if table:
            write_table(os.fspath(table), rows)
    return RunResult(rows, stats["computed"], stats["failed"], time.perf_counter() - t0,
                     stats["engine"], stats["wait"], plan.out, len(todo))


def _background() -> None:
    """Lower this thread's CPU priority (Linux: threads have their own nice value): decoding and
    writing then take the cores the engine leaves idle instead of preempting its threads, whose
    parallel loops all wait for the slowest one."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):   # not Linux, or not allowed: keep the priority
        pass


def _stream(plan: Plan, engine: Engine, todo: List[int], write, decode_workers, prefetch,
            stats) -> None:
    """Decode pool -> engine (this thread) -> writer thread, over the chunks ``todo``."""
    workers = decode_workers or min(4, os.cpu_count() or 1)
    pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="lrpfast-decode",
                                 initializer=_background)
    out_q: "queue.Queue" = queue.Queue(maxsize=2)
    failure: List[BaseException] = []

    def writer():
        _background()
        while True:
            res = out_q.get()
            if res is None:
                return
            if failure:
                continue   # drain after an error
            try:
                write(res)
            except BaseException as e:   # noqa: BLE001 - raised again in the engine thread
                failure.append(e)

    wt = threading.Thread(target=writer, name="lrpfast-writer", daemon=True)
    wt.start()
    futures: Dict[int, list] = {}

    def submit(k):
        if k < len(todo) and todo[k] not in futures:
            a, b = plan.chunk(todo[k])
            futures[todo[k]] = [pool.submit(decode, plan, plan.items[i], engine.input_shape)
                                for i in range(a, b)]
    try:
        for k in range(min(len(todo), prefetch + 1)):
            submit(k)
        for k, ci in enumerate(todo):
            submit(k + prefetch)
            t = time.perf_counter()
            decoded = [f.result() for f in futures.pop(ci)]
            t1 = time.perf_counter()
            res = compute_chunk(engine, ci, decoded)
            t2 = time.perf_counter()
            if failure:
                raise failure[0]
            out_q.put(res)
            t3 = time.perf_counter()
            stats["engine"] += t2 - t1
            stats["wait"] += (t1 - t) + (t3 - t2)
    finally:
        for fs in futures.values():
            for f in fs:
                f.cancel()
        pool.shutdown(wait=True)
        out_q.put(None)
        wt.join()
    if failure:
        raise failure[0]
