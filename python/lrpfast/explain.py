"""The heatmap tool: the LRP toolbox's demonstrator, and a modern interface.

Toolbox interface (``lrpfast explain CONFIG FILELIST PREFIX [--batch N] [--[no-]progress]``)
==========================================================================================

CONFIG
    Pairs of lines: a *key line* then its *value line*. A line is a key line when, after
    stripping white space, it equals one of :data:`CONFIG_KEYS`; the line right after it is its
    value (stripped; it may be empty only for ``synsetfile``). Every other line (comments,
    blank lines, unknown words) is ignored. A key given twice is an error. Required keys: all of
    :data:`CONFIG_KEYS` except ``synsetfile`` (optional: no class names) and
    ``auxiliaryvariable_maxlayerindexforflatdistinconv`` (optional, default -1; the formula
    codes that need it say so). Relative file paths are taken relative to the current
    directory, else (if not found there) relative to the config file's folder.

    ``use_mean_file_asbinaryprotoblob``: 1 = binaryproto (Caffe's BGR planes), 2 = binaryproto
    with the channels in reversed (RGB) order, 0 = text file: line 1 ``C``, line 2 ``H W``, then
    C*H*W numbers (white space separated, any line breaks), channel after channel in the net's
    BGR order, each channel column-major (value index ``h + w*H``, as ``rawhm``).

FILELIST
    One image per line: ``path class`` (class -1 = top-1, -2 = the top-5 summed, >= 0 a class
    index; a missing class means -1). Blank lines and lines starting with ``#`` are skipped.
    The image path is ``os.path.join(PREFIX, path)`` (an absolute ``path`` ignores PREFIX).

Pre-processing (:func:`preprocess`)
    The image is read with Pillow and converted to RGB, resized with ``Image.BILINEAR`` so its
    long side is ``baseimgsize``; the short side becomes ``max(1, floor(s * base / l + 0.5))``
    (round half up). Then, per axis, a side longer than the net's input is centre-cropped
    (offset ``(len - S) // 2``) and a shorter side is padded by repeating its edge pixels
    (``(S - len) // 2`` before, the rest after). The mean image's centre region of the net's
    input size (offset ``(Hm - H) // 2``, ``(Wm - W) // 2``) is subtracted from the BGR planes
    (values 0..255). The crop before the mean subtraction is ``<name>_as_inputted_into_the_dnn.png``.

Outputs, per image, where the toolbox writes them (:func:`toolbox_output_base`):
``standalone_rootpath`` is found as a substring of the image path (its first occurrence), and
the outputs go to ``standalone_outpath + "/" +`` the image path from there on, the root stub
included, with the image's file name *with its extension* before each suffix: root
``someimages`` and image ``prefix/imgs/someimages/cat.png`` give
``OUT/someimages/cat.png_rawhm.txt`` etc. An image path without the stub, or one whose output
would leave ``standalone_outpath`` (``..`` components), is a per-image error:

* ``<name>_rawhm.txt``: line ``3``, line ``H W``, then the R plane, G plane, B plane (reversed
  from the net's BGR), each as H lines of W values separated by one space, every value printed
  with C's ``%g`` (6 significant digits, as a C++ stream's default), lines ending in ``\\n``.
  :func:`read_rawhm` reads it back as (3, H, W) in that (RGB) order.
* ``<name>_heatmap.png``: :func:`lrpfast.render.toolbox_heatmap`.
* ``<name>_as_inputted_into_the_dnn.png``: the pre-processed crop (RGB, before mean subtraction).
* ``<name>_top10scores.txt``: the 10 (or fewer) best outputs of the net's output blob (for
  CaffeNet: the softmax probabilities), best first, one ``class score`` line each (score with
  ``%g``); with a synset file the line is ``class score synsetline`` where ``synsetline`` is the
  class's line of the synset file, stripped (e.g. ``281 0.53 n02123045 tabby, tabby cat``).

Relevance: ``net.forward`` then ``net.backward_relevance_multi`` with a
:class:`lrpfast.RelPropOpts` built from the config (caffe mode), ``--batch`` images per pass.

Exit status: 0 all images done, 1 some image failed (each failure is one message on stderr; the
other images are still written), 2 usage or config errors (nothing is computed).

Modern interface (``lrpfast heatmaps``)
=======================================

``lrpfast heatmaps --model PROTOTXT --weights CAFFEMODEL --images PATH_OR_DIR... --out DIR
[--rules cmp_alpha2_flat,epsilon | toolbox:CODE] [--eps E] [--gamma G] [--low L --high H]
[--flat-layers N] [--classes -1 [281 ...]] [--mean B,G,R | --mean-file F [--mean-kind 1]]
[--preprocessing caffe|torchvision [--std R,G,B]] [--fast-decode]
[--top LAYER] [--skip-unsupported] [--resize crop|pad|resize] [--size N]
[--formats png,overlay,rawhm,npy,input,top10]
[--cmap bwr] [--norm symmetric] [--percentile 99.5] [--batch N] [--[no-]progress]
[--store S.zarr [--dtype float16] [--table T.csv] [--no-resume]] [--boxes DIR
[--class-names FILE]] [--scheduler ADDRESS [--ship-model]] [--threads N] [--decode-workers N]``

The run goes through :func:`lrpfast.pipeline.run` (images decoded in background threads, files
written by a writer thread; ``--scheduler``: :func:`lrpfast.dask.run` on a Dask cluster, the
files then written by the workers). ``--store`` adds the Zarr store of all relevance maps and
the table (one row per image, rule and class; mu / mu_w with ``--boxes``), and resumes an
interrupted run of the same settings. A PATH that is a text file (not an image) is a file list
in the toolbox's format (its classes are ignored here: ``--classes`` applies).
``--preprocessing torchvision``: RGB, values / 255, minus ``--mean`` (default ImageNet's
0.485,0.456,0.406), divided by ``--std`` (0.229,0.224,0.225), short side to ``--size``
(default 256), centre crop.

Pre-processing is :func:`lrpfast.preprocess.preprocess` with ``mode=--resize`` (default
``crop``: short side to ``--size``, default the net's input size, then the centre; ``pad`` is
the toolbox's scheme above). Without ``--mean``/``--mean-file`` a warning says that the images
go in as raw 0..255 values. Per image ``stem`` and each rule and class:
``DIR/<stem>_<rule>_c<class>{_heatmap.png,_overlay.png,_rawhm.txt,.npy}``, where ``<class>``
is the explained class (for ``-1`` the index of the best-scoring class; ``top5`` for ``-2``);
``_heatmap.png`` is :func:`lrpfast.render.heatmap` (``--norm toolbox --cmap toolbox``: the
toolbox's picture), ``_overlay.png`` :func:`lrpfast.render.relevance_overlay` over the input
picture, the ``.npy`` holds the (C, H, W) float32 relevance in the net's BGR layout; ``input``
and ``top10`` write ``<stem>_as_inputted_into_the_dnn.png`` / ``<stem>_top10scores.txt`` once
per image. Rules are composite names (``lrpfast.composites.COMPOSITE_NAMES``; default
``lrpfast.DEFAULT_RULES``) with the parameters ``--eps``, ``--gamma``, ``--low``/``--high``
(per-channel bounds of ``epsilon_gamma_box``'s z^B rule) and ``--flat-layers``, or
``toolbox:CODE[:EPS]`` (a caffe-mode :class:`RelPropOpts` with that formula code). Directories
expand to the image files they hold (sorted; .jpg .jpeg .png .bmp .ppm .tif .tiff .gif
.webp). The run ends with a one-line summary on stdout.

Output files (both commands)
============================

Every output file is written under a temporary name in its folder (``.<name>.<random>.part``)
and renamed into place, so a file is either complete or absent, also after Ctrl-C (the run
then stops with exit status 130 and one line on stderr, and removes its temporary file). The
rename replaces what the folder holds under that name: files from an earlier run are
overwritten, and a symbolic link there is replaced by the new file, never followed (its
target is left untouched). Two inputs of one run that would write the same files (one
image listed twice in a file list; ``a.png`` and ``a.jpg`` for ``heatmaps``, whose names drop
the extension) are a collision: the later one is reported as failed and skipped (exit status
1), the first one's files are kept. Every image
that fails, for any reason (unreadable file, not enough memory, a non-finite result...), is
one ``lrpfast: error:`` line; the others are still processed. ``baseimgsize`` / ``--size``
are bounded by :data:`MAX_IMAGE_SIDE` and ``--batch`` by :data:`MAX_BATCH`.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ._files import atomic_path as _atomic_path
from ._files import save_npy as _save_npy
from ._files import save_png as _save_png
from ._files import write_text as _write_text
from .pipeline import IMAGE_EXTENSIONS, Progress as _Bar
from .preprocess import mean_region as _mean_region, preprocess as _preprocess, resized_size

__all__ = ["CONFIG_KEYS", "ConfigError", "ToolboxConfig", "read_config", "read_filelist",
           "read_mean", "read_synsets", "preprocess", "format_rawhm", "write_rawhm",
           "read_rawhm", "format_top10", "run_toolbox", "run_heatmaps", "main_explain",
           "main_heatmaps", "add_subcommands", "toolbox_output_base"]

CONFIG_KEYS = ("param_file", "model_file", "mean_file", "use_mean_file_asbinaryprotoblob",
               "synsetfile", "lastlayerindex", "firstlayerindex", "numclasses", "baseimgsize",
               "standalone_outpath", "standalone_rootpath", "relpropformulatype", "epsstab",
               "alphabeta_beta", "auxiliaryvariable_maxlayerindexforflatdistinconv")
_OPTIONAL = {"synsetfile": "", "auxiliaryvariable_maxlayerindexforflatdistinconv": "-1"}
_INT_KEYS = ("use_mean_file_asbinaryprotoblob", "lastlayerindex", "firstlayerindex",
             "numclasses", "baseimgsize", "relpropformulatype",
             "auxiliaryvariable_maxlayerindexforflatdistinconv")
_FLOAT_KEYS = ("epsstab", "alphabeta_beta")


#: Largest baseimgsize / --size: an image is resized to this long side before cropping
#: (8192**2 RGB pixels are 192 MiB as uint8), so a typo cannot exhaust memory.
MAX_IMAGE_SIDE = 8192
#: Largest --batch (images stacked into one pass; the engine still splits by memory_limit).
MAX_BATCH = 1024


class ConfigError(ValueError):
    """A config / file list / mean file problem (exit status 2 in the CLI)."""


# =============================================================================== config
@dataclass
class ToolboxConfig:
    param_file: str
    model_file: str
    mean_file: str
    use_mean_file_asbinaryprotoblob: int
    synsetfile: str
    lastlayerindex: int
    firstlayerindex: int
    numclasses: int
    baseimgsize: int
    standalone_outpath: str
    standalone_rootpath: str
    relpropformulatype: int
    epsstab: float
    alphabeta_beta: float
    auxiliaryvariable_maxlayerindexforflatdistinconv: int
    source: str = "<config>"
    lines: dict = field(default_factory=dict)   # key -> line number of its value (1-based)

    def relpropopts(self):
        """The :class:`lrpfast.RelPropOpts` of this config (caffe mode); ConfigError if bad."""
        from .compat import RelPropOpts
        try:
            return RelPropOpts(
                relpropformulatype=self.relpropformulatype, epsstab=self.epsstab,
                alphabeta_beta=self.alphabeta_beta, lastlayerindex=self.lastlayerindex,
                firstlayerindex=self.firstlayerindex, numclasses=self.numclasses,
                auxiliaryvariable_maxlayerindexforflatdistinconv=(
                    self.auxiliaryvariable_maxlayerindexforflatdistinconv))
        except ValueError as e:
            raise ConfigError(f"{self.source}: {e}") from None


def _resolve(path: str, base_dir: str) -> str:
    if not path or os.path.isabs(path) or os.path.exists(path):
        return path
    alt = os.path.join(base_dir, path)
    return alt if os.path.exists(alt) else path


def parse_config(text: str, source: str = "<config>") -> ToolboxConfig:
    """Parse config text (see the module docstring); ConfigError names the file, key and line."""
    lines = text.splitlines()
    values: dict[str, str] = {}
    where: dict[str, int] = {}
    i = 0
    while i < len(lines):
        key = lines[i].strip()
        if key in CONFIG_KEYS:
            if i + 1 >= len(lines):
                raise ConfigError(f"{source}:{i + 1}: key '{key}' has no value line after it")
            if key in values:
                raise ConfigError(f"{source}:{i + 1}: key '{key}' given twice (first at line "
                                  f"{where[key] - 1})")
            values[key] = lines[i + 1].strip()
            where[key] = i + 2
            i += 2
        else:
            i += 1
    missing = [k for k in CONFIG_KEYS if k not in values and k not in _OPTIONAL]
    if missing:
        raise ConfigError(f"{source}: missing key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(missing)} (each as a line of its own, followed by a line "
                          f"with its value)")
    for k, v in _OPTIONAL.items():
        values.setdefault(k, v)
    parsed = {}
    for k in CONFIG_KEYS:
        v = values[k]
        at = f"{source}:{where[k]}" if k in where else source
        if k in _INT_KEYS:
            try:
                parsed[k] = int(v)
            except ValueError:
                raise ConfigError(f"{at}: key '{k}' needs an integer, got {v!r}") from None
        elif k in _FLOAT_KEYS:
            try:
                parsed[k] = float(v)
            except ValueError:
                raise ConfigError(f"{at}: key '{k}' needs a number, got {v!r}") from None
            if not math.isfinite(parsed[k]):
                raise ConfigError(f"{at}: key '{k}' must be finite, got {v!r}")
        else:
            if not v and k != "synsetfile":
                raise ConfigError(f"{at}: key '{k}' has an empty value")
            parsed[k] = v
    checks = [("use_mean_file_asbinaryprotoblob", lambda x: x in (0, 1, 2), "0, 1 or 2"),
              ("baseimgsize", lambda x: x > 0, "> 0"),
              ("baseimgsize", lambda x: x <= MAX_IMAGE_SIDE,
               f"<= {MAX_IMAGE_SIDE} (the long side an image is resized to)"),
              ("numclasses", lambda x: x > 0, "> 0"), ("epsstab", lambda x: x >= 0, ">= 0"),
              ("alphabeta_beta", lambda x: x >= 0, ">= 0"),
              ("firstlayerindex", lambda x: x >= 0, ">= 0"),
              ("lastlayerindex", lambda x: x >= -2, ">= -2")]
    for k, ok, what in checks:
        if not ok(parsed[k]):
            raise ConfigError(f"{source}:{where[k]}: key '{k}' must be {what}, got "
                              f"{values[k]!r}")
    cfg = ToolboxConfig(**parsed, source=source, lines=where)
    cfg.relpropopts()   # formula code, aux etc. checked now
    return cfg


def _read_text(path: str, what: str) -> str:
    """A text file's contents (UTF-8, bad bytes replaced); ConfigError naming ``what`` and the
    path when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None


def read_config(path) -> ToolboxConfig:
    path = os.fspath(path)
    cfg = parse_config(_read_text(path, "config file"), path)
    base = os.path.dirname(os.path.abspath(path))
    for k in ("param_file", "model_file", "mean_file", "synsetfile"):
        setattr(cfg, k, _resolve(getattr(cfg, k), base))
    return cfg


def read_filelist(path, prefix: str = "") -> list[tuple[str, int, int]]:
    """FILELIST -> [(image path, class, line number)]; ConfigError on a malformed line."""
    path = os.fspath(path)
    text = _read_text(path, "file list")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.rsplit(None, 1)
        cls = -1
        if len(parts) == 2:
            try:
                cls = int(parts[1])
                s = parts[0]
            except ValueError:
                cls = -1         # a path with a space and no class
        if cls < -2:
            raise ConfigError(f"{path}:{n}: class {cls} is not allowed (-1 top-1, -2 top-5 "
                              f"summed, or a class index >= 0)")
        out.append((os.path.join(prefix, s) if prefix else s, cls, n))
    return out


def read_mean(path, kind: int) -> np.ndarray:
    """Mean image as float32 (C, H, W) in the net's BGR order; ``kind`` as
    ``use_mean_file_asbinaryprotoblob`` (1 binaryproto BGR, 2 binaryproto reversed, 0 text)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"mean file {path} not found")
    if kind in (1, 2):
        from . import caffe
        try:
            a = np.asarray(caffe.read_binaryproto(path), np.float32)
        except ValueError as e:
            raise ConfigError(f"mean file {path}: {e}") from None
        while a.ndim > 3 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 3:
            raise ConfigError(f"mean file {path}: expected a (C, H, W) blob, got shape {a.shape}")
        return np.ascontiguousarray(a[::-1] if kind == 2 else a)
    if kind != 0:
        raise ConfigError(f"mean file kind must be 0 (text), 1 or 2 (binaryproto), got {kind}")
    lines = _read_text(path, "mean file").splitlines()
    try:
        C = int(lines[0].split()[0])
        H, W = (int(t) for t in lines[1].split()[:2])
    except (IndexError, ValueError):
        raise ConfigError(f"mean file {path}: text mean needs line 1 'C' and line 2 'H W'") \
            from None
    try:
        vals = np.array(" ".join(lines[2:]).split(), dtype=np.float64)
    except ValueError as e:
        raise ConfigError(f"mean file {path}: bad number ({e})") from None
    if C <= 0 or H <= 0 or W <= 0 or vals.size != C * H * W:
        raise ConfigError(f"mean file {path}: header says C={C} H={H} W={W} ({C * H * W} "
                          f"values), found {vals.size} values")
    return np.ascontiguousarray(vals.reshape(C, W, H).transpose(0, 2, 1), dtype=np.float32)


def read_synsets(path) -> list[str]:
    if not path:
        return []
    return [l.strip() for l in _read_text(path, "synset file").splitlines()]


# =============================================================================== pre-processing
def _load_image(path: str, base, size: tuple[int, int], mean):
    """The toolbox's preprocess() of an image file, or the message saying why it cannot be
    used."""
    if not os.path.isfile(path):
        return "image file not found"
    try:
        return preprocess(path, base or max(size), size, mean)
    except Exception as e:   # Pillow raises many types for bad files
        return f"cannot read image: {e}"


def preprocess(image, base: int, size: tuple[int, int], mean=None):
    """One image -> (crop uint8 (H, W, 3) RGB, x float32 (3, H, W) BGR minus the mean): the
    toolbox's ``mode="pad"`` of :func:`lrpfast.preprocess.preprocess`.

    ``image``: a path or a PIL image; ``size``: the net input (H, W); ``mean``: None, a
    (3,) BGR vector or a (3, Hm, Wm) BGR image (its centre region is used)."""
    if mean is not None:
        mean = mean_region(mean, size)   # ConfigError for a bad mean
    p = _preprocess(image, size, mode="pad", base=int(base), mean=mean)
    return p.image, p.x


def mean_region(mean, size) -> np.ndarray:
    """:func:`lrpfast.preprocess.mean_region`, raising ConfigError."""
    try:
        return _mean_region(mean, size)
    except ValueError as e:
        raise ConfigError(str(e)) from None


# =============================================================================== outputs
def format_rawhm(R_chw) -> str:
    """Text of ``<name>_rawhm.txt`` for relevance (3, H, W) in the net's BGR order."""
    R = np.asarray(R_chw)
    if R.ndim != 3:
        raise ValueError(f"format_rawhm expects (C, H, W), got shape {R.shape}")
    C, H, W = R.shape
    out = [f"{C}\n", f"{H} {W}\n"]
    for c in range(C - 1, -1, -1):          # BGR -> RGB
        for row in R[c].astype(np.float64):
            out.append(" ".join("%g" % v for v in row) + "\n")
    return "".join(out)


def write_rawhm(path, R_chw) -> None:
    text = format_rawhm(R_chw)
    with _atomic_path(path) as tmp, open(tmp, "w", encoding="ascii", newline="\n") as f:
        f.write(text)


def read_rawhm(path) -> np.ndarray:
    """``<name>_rawhm.txt`` -> float32 (C, H, W) in the file's (RGB) channel order."""
    with open(path, encoding="ascii") as f:
        tok = f.read().split()
    try:
        C, H, W = int(tok[0]), int(tok[1]), int(tok[2])
        vals = np.array(tok[3:], dtype=np.float32)
    except (IndexError, ValueError) as e:
        raise ValueError(f"{path}: not a rawhm file ({e})") from None
    if vals.size != C * H * W:
        raise ValueError(f"{path}: header says {C}x{H}x{W}, found {vals.size} values")
    return vals.reshape(C, H, W)


def format_top10(scores, synsets=(), k: int = 10) -> str:
    """``class score[ synset]`` lines, best first (ties: lower class first)."""
    s = np.asarray(scores, np.float64).ravel()
    order = np.argsort(-s, kind="stable")[:k]
    lines = []
    for c in order:
        c = int(c)
        name = f" {synsets[c]}" if c < len(synsets) and synsets[c] else ""
        lines.append(f"{c} {'%g' % s[c]}{name}\n")
    return "".join(lines)





def _err(msg):
    print(f"lrpfast: error: {msg}", file=sys.stderr)


def _describe(e: BaseException) -> str:
    """One line for a per-image failure: the message, with the type where it is not a
    ValueError/OSError (whose messages say enough), e.g. MemoryError."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, (ValueError, OSError, KeyError)) and msg:
        return msg
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


class _Batches:
    """The images of a run in batches of ``size``, one forward + relevance call each, with the
    per-image accounting of the toolbox command: every failure (``skip``, a batch whose call
    fails, an image whose outputs cannot be written) is one message on stderr, counts in
    ``failed`` and advances the progress bar, as does every image written.

    compute(x, items) -> result for the stacked inputs x (N, ...) may raise any Exception
    (the whole batch fails); write(i, item, result) writes image i's outputs and may raise
    any Exception (that image fails). KeyboardInterrupt passes through."""

    def __init__(self, size, bar, compute, write):
        self.size, self.bar, self.compute, self.write = size, bar, compute, write
        self.failed, self.pending = 0, []

    def skip(self, message):
        _err(message)
        self.failed += 1
        self.bar.step()

    def add(self, label, x, item):
        """Queue one image (label: how messages name it); computes when the batch is full."""
        self.pending.append((label, x, item))
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self):
        pending, self.pending = self.pending, []
        if not pending:
            return
        try:
            res = self.compute(np.stack([x for _, x, _ in pending]), [it for _, _, it in pending])
        except Exception as e:   # noqa: BLE001 - any failure (memory, NaN...) fails this batch
            for label, _, _ in pending:
                _err(f"{label}: relevance failed: {_describe(e)}")
            self.failed += len(pending)
            self.bar.step(len(pending))
            return
        for i, (label, _, item) in enumerate(pending):
            try:
                self.write(i, item, res)
            except Exception as e:   # noqa: BLE001 - this image fails, the others go on
                _err(f"{label}: cannot write outputs: {_describe(e)}")
                self.failed += 1
            self.bar.step()


def _output_scores(net, out):
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return np.asarray(out).reshape(out.shape[0], -1)


# =============================================================================== toolbox run
def run_toolbox(config, filelist, prefix="", *, batch: int = 1, progress=None) -> int:
    """The toolbox demonstrator; returns the exit status (0, 1, 2)."""
    from .net import Net
    from . import render
    try:
        cfg = config if isinstance(config, ToolboxConfig) else read_config(config)
        opts = cfg.relpropopts()
        items = read_filelist(filelist, prefix)
        for k in ("param_file", "model_file"):
            if not os.path.isfile(getattr(cfg, k)):
                raise ConfigError(f"{cfg.source}:{cfg.lines.get(k, '?')}: {k} "
                                  f"{getattr(cfg, k)} not found")
        mean = read_mean(cfg.mean_file, cfg.use_mean_file_asbinaryprotoblob)
        synsets = read_synsets(cfg.synsetfile) if cfg.synsetfile else []
        try:
            net = Net(cfg.param_file, cfg.model_file)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"cannot load the net ({cfg.param_file}, {cfg.model_file}): {e}") \
                from None
        if len(net.inputs) != 1:
            raise ConfigError(f"{cfg.param_file}: the tool needs a net with one input, got "
                              f"{list(net.inputs)}")
        shape = next(iter(net.inputs.values()))
        if len(shape) != 3 or shape[0] != 3:
            raise ConfigError(f"{cfg.param_file}: the input must be (3, H, W), got {shape}")
        size = shape[1:]
        mean_region(mean, size)
        from .compat import _resolve_top, caffe_layers
        try:
            top, _ = _resolve_top(net, opts, caffe_layers(net))
        except ValueError as e:
            raise ConfigError(f"{cfg.source}: lastlayerindex: {e}") from None
        m = int(np.prod(net.shapes[top.tops[0]]))
        if m != cfg.numclasses:
            raise ConfigError(f"{cfg.source}:{cfg.lines.get('numclasses', '?')}: numclasses is "
                              f"{cfg.numclasses} but layer '{top.name}' (where relevance starts) "
                              f"has {m} outputs")
    except ConfigError as e:
        _err(e)
        return 2
    if not 1 <= batch <= MAX_BATCH:
        _err(f"--batch must be in 1..{MAX_BATCH}, got {batch}")
        return 2

    def compute(x, items):
        scores = _output_scores(net, net.forward(x))
        return scores, net.backward_relevance_multi([cls for cls, _, _ in items], opts)

    def write(i, item, result):
        _, crop, base = item
        scores, res = result
        R = res.R[i]
        write_rawhm(base + "_rawhm.txt", R)
        _save_png(base + "_heatmap.png", render.toolbox_heatmap(R))
        _save_png(base + "_as_inputted_into_the_dnn.png", crop)
        _write_text(base + "_top10scores.txt", format_top10(scores[i], synsets))

    bar = _Bar(len(items), progress)
    run = _Batches(batch, bar, compute, write)
    bases: dict[str, int] = {}   # output base -> the file list line that writes it
    for path, cls, line in items:
        where = f"{path} (file list line {line})"
        try:
            base = toolbox_output_base(cfg.standalone_outpath, cfg.standalone_rootpath, path)
        except ValueError as e:
            run.skip(f"{where}: {e}")
            continue
        if cls >= cfg.numclasses:
            run.skip(f"{where}: class {cls} out of range 0..{cfg.numclasses - 1}")
            continue
        loaded = _load_image(path, cfg.baseimgsize, size, mean)
        if isinstance(loaded, str):
            run.skip(f"{where}: {loaded}")
            continue
        crop, x = loaded
        key = os.path.normcase(os.path.normpath(base))
        if key in bases:
            run.skip(f"{where}: would overwrite the outputs of file list line {bases[key]} "
                     f"({base}_*); skipped")
            continue
        bases[key] = line
        run.add(where, x, (cls, crop, base))
    run.flush()
    bar.close()
    return 1 if run.failed else 0


# =============================================================================== modern run
def toolbox_output_base(outpath: str, rootstub: str, image: str) -> str:
    """The toolbox heatmap tool's output prefix of one image: ``outpath + "/" +`` the image
    path from the first occurrence of ``rootstub`` on (the stub kept, the file name with its
    extension); the outputs are this plus ``_rawhm.txt``, ``_heatmap.png``, ... ValueError
    when the stub does not occur in the path, or when the result would leave ``outpath``."""
    pos = image.find(rootstub) if rootstub else -1
    if pos < 0:
        raise ValueError(f"not under standalone_rootpath: {rootstub!r} does not occur in the "
                         f"image path")
    tail = image[pos:]
    if os.pardir in tail.replace("\\", "/").split("/"):
        raise ValueError(f"the output path {outpath}/{tail} would leave standalone_outpath "
                         f"('..' after the root stub)")
    base = os.path.normpath(outpath + "/" + tail)
    out_abs = os.path.abspath(outpath)
    if os.path.commonpath([out_abs, os.path.abspath(base)]) != out_abs or \
            os.path.abspath(base) == out_abs:
        raise ValueError(f"the output path {base} would leave standalone_outpath {outpath}")
    return base


def _expand_images(paths) -> list[str]:
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(os.path.join(p, f) for f in os.listdir(p)
                          if f.lower().endswith(IMAGE_EXTENSIONS))
        else:
            out.append(p)
    return out


def _parse_rules(spec: str, params=None):
    """``--rules`` -> [(name for files, rules argument)]; ``params``: keyword parameters of
    :func:`lrpfast.composite` (eps, flat_layers, gamma, low, high) for the composite names."""
    from .compat import RelPropOpts
    from .composites import composite
    rules = []
    for name in [s.strip() for s in spec.split(",") if s.strip()]:
        if name.startswith("toolbox:"):
            parts = name.split(":")
            try:
                kw = {"relpropformulatype": int(parts[1])}
                if len(parts) > 2:
                    kw["epsstab"] = float(parts[2])
                rules.append((name.replace(":", "-"), RelPropOpts(**kw)))
            except (ValueError, IndexError) as e:
                raise ConfigError(f"--rules {name}: {e}") from None
        else:
            kw = {k: v for k, v in (params or {}).items() if v is not None}
            if "low" in kw and name != "epsilon_gamma_box":
                kw.pop("low"), kw.pop("high", None)
            if "flat_layers" in kw and not name.endswith("_flat"):
                kw.pop("flat_layers")
            try:
                rules.append((name, composite(name, **kw)))
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"--rules {name}: {e}") from None
    if not rules:
        raise ConfigError("--rules is empty")
    return rules


class _HeatmapFiles:
    """The heatmaps command's files of one image (the pipeline's ``on_image``; picklable, so
    Dask workers write them too): see the module docstring."""

    def __init__(self, out, formats, classes, synsets, cmap, norm, percentile):
        self.out, self.formats, self.classes, self.synsets = out, formats, classes, synsets
        self.cmap, self.norm, self.percentile = cmap, norm, percentile

    def __call__(self, decoded, top_row, scores, rel):
        from . import render
        crop, base = decoded.pre.image, os.path.join(self.out, decoded.item.name)
        formats = self.formats
        if "input" in formats:
            _save_png(base + "_as_inputted_into_the_dnn.png", crop)
        if "top10" in formats:
            _write_text(base + "_top10scores.txt", format_top10(scores, self.synsets))
        for rn, Rk in rel.items():
            for k, c in enumerate(self.classes):
                R = Rk[k]
                c = decoded.item.listed if c == "listed" else c
                b = f"{base}_{rn}_c{_class_tag(c, scores)}"
                if "png" in formats:
                    img = render.toolbox_heatmap(R) if (self.cmap, self.norm) == (
                        "toolbox", "toolbox") else render.heatmap(
                            R, cmap=self.cmap, norm=self.norm, percentile=self.percentile)
                    _save_png(b + "_heatmap.png", img)
                if "overlay" in formats:
                    _save_png(b + "_overlay.png", render.relevance_overlay(
                        crop, R, cmap=self.cmap, percentile=self.percentile))
                if "rawhm" in formats:
                    write_rawhm(b + "_rawhm.txt", R)
                if "npy" in formats:
                    _save_npy(b + ".npy", R)


def _heatmaps_preprocessing(args, size):
    """--preprocessing / --mean / --mean-file / --std / --resize / --size -> Preprocessing."""
    from .pipeline import Preprocessing

    def floats(text, what, order):
        try:
            v = np.array([float(t) for t in text.split(",")], np.float32)
        except ValueError:
            raise ConfigError(f"{what} needs {order} numbers, got {text!r}") from None
        if v.size != 3 or not np.all(np.isfinite(v)):
            raise ConfigError(f"{what} needs 3 finite values {order}, got {text!r}")
        return v
    if args.preprocessing == "torchvision":
        if args.mean_file:
            raise ConfigError("--mean-file goes with --preprocessing caffe; torchvision's "
                              "models take --mean R,G,B and --std R,G,B on 0..1 values")
        kw = {}
        if args.mean:
            kw["mean"] = tuple(floats(args.mean, "--mean", "R,G,B (on 0..1)"))
        if args.std:
            s = floats(args.std, "--std", "R,G,B (on 0..1)")
            if np.any(s <= 0):
                raise ConfigError(f"--std must be > 0, got {args.std!r}")
            kw["std"] = tuple(s)
        return Preprocessing.torchvision(resize=args.size or 256, draft=args.fast_decode,
                                         **kw)
    if args.std:
        raise ConfigError("--std goes with --preprocessing torchvision")
    if args.mean_file:
        mean = read_mean(args.mean_file, args.mean_kind)
    elif args.mean:
        mean = floats(args.mean, "--mean", "B,G,R")
    else:
        mean = None
        print("lrpfast: warning: no --mean or --mean-file: the images go in as raw 0..255 "
              "values; Caffe models expect the mean of their training data subtracted "
              "(e.g. --mean 104,117,123 for ImageNet models)", file=sys.stderr)
    if mean is not None:
        mean_region(mean, size)
    return Preprocessing(mode=args.resize, size=args.size, mean=mean, channel_order="bgr",
                         draft=args.fast_decode)


def _heatmaps_items(paths):
    """--images -> (pipeline items, messages of the skipped duplicates, count of images)."""
    from .pipeline import collect_images
    files = []
    for p in _expand_images(paths):
        if os.path.isfile(p) and not p.lower().endswith(IMAGE_EXTENSIONS):
            files += [it.path for it in collect_images(p)]   # a file list
        else:
            files.append(p)
    items, skipped, stems = [], [], set()
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            skipped.append(f"{path}: another image has the name '{stem}'; skipped")
            continue
        stems.add(stem)
        items.append(path)
    return items, skipped, len(files)


def run_heatmaps(args) -> int:
    from .net import Net
    from . import pipeline
    try:
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
        bad = [f for f in formats if f not in ("png", "overlay", "rawhm", "npy", "input",
                                               "top10")]
        if bad:
            raise ConfigError(f"--formats: unknown {', '.join(bad)} (png, overlay, rawhm, npy, "
                              f"input, top10)")
        bounds = {k: _parse_bounds(getattr(args, k), f"--{k}") for k in ("low", "high")}
        rules = _parse_rules(args.rules, dict(eps=args.eps, flat_layers=args.flat_layers,
                                              gamma=args.gamma, **bounds))
        if (args.weights is None) != args.model.lower().endswith(".onnx"):
            raise ConfigError("--weights (a caffemodel) goes with a prototxt --model, and not "
                              "with an .onnx model, which carries its weights")
        for f in (args.model, args.weights or args.model):
            if not os.path.isfile(f):
                raise ConfigError(f"file {f} not found")
        net_options = {"skip_unsupported": True} if args.skip_unsupported else {}
        try:
            net = Net(args.model, args.weights, **net_options)
            if args.top is not None:
                net.top_layer(args.top)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"cannot load the net: {e}") from None
        shape = next(iter(net.inputs.values()))
        if len(net.inputs) != 1 or len(shape) != 3 or shape[0] != 3:
            raise ConfigError(f"{args.model}: the tool needs one (3, H, W) input")
        if args.size is not None and not 1 <= args.size <= MAX_IMAGE_SIDE:
            raise ConfigError(f"--size must be in 1..{MAX_IMAGE_SIDE}, got {args.size}")
        prep = _heatmaps_preprocessing(args, shape[1:])
        classes = args.classes
        if any(c < -2 for c in classes):
            raise ConfigError("--classes: -1 (top-1), -2 (top-5) or a class index >= 0")
        if not 1 <= args.batch <= MAX_BATCH:
            raise ConfigError(f"--batch must be in 1..{MAX_BATCH}, got {args.batch}")
        synsets = read_synsets(args.synsets) if args.synsets else []
        if args.scheduler and not args.store:
            raise ConfigError("--scheduler needs --store (a Zarr store every worker can write)")
        images, skipped, total = _heatmaps_items(args.images)
    except ConfigError as e:
        _err(e)
        return 2
    if not total:
        _err("no images given")
        return 2
    t0 = time.perf_counter()
    for msg in skipped:
        _err(msg)
    files = _HeatmapFiles(args.out, formats, classes, synsets, args.cmap, args.norm,
                          args.percentile)
    kw = dict(weights=args.weights, rules=dict(rules), classes=list(classes), out=args.store,
              table=args.table, batch=args.batch, preprocessing=prep, dtype=args.dtype,
              top=args.top, boxes=args.boxes, class_names=args.class_names, resume=args.resume,
              progress=args.progress, threads=args.threads, net_options=net_options,
              on_image=files, on_error=lambda label, msg: _err(f"{label}: {msg}"))
    try:
        if images and args.scheduler:
            from dask.distributed import Client
            from . import dask as lrpdask
            with Client(args.scheduler) as client:
                res = lrpdask.run(client, args.model, images, ship_model=args.ship_model, **kw)
        elif images:
            res = pipeline.run(args.model, images, net=net, decode_workers=args.decode_workers,
                               **kw)
    except ImportError as e:
        _err(e)
        return 2
    computed, failed = (res.computed, res.failed) if images else (0, 0)
    failed += len(skipped)
    print(f"lrpfast heatmaps: {computed - (failed - len(skipped))} of {total} images explained "
          f"({failed} failed) under {', '.join(rn for rn, _ in rules)} for classes "
          f"{' '.join(map(str, classes))} in {time.perf_counter() - t0:.1f} s -> {args.out}"
          + (f" (store {args.store})" if args.store else ""))
    return 1 if failed else 0


def _class_tag(c: int, scores) -> str:
    """The explained class as it appears in file names: the index (-1: the best-scoring
    class's index), or ``top5`` for -2."""
    if c == -1:
        return str(int(np.argmax(scores)))
    return "top5" if c == -2 else str(c)


def _parse_bounds(text, what):
    """``--low``/``--high``: one number or B,G,R per-channel values (None: not given)."""
    if text is None:
        return None
    try:
        v = [float(t) for t in str(text).split(",")]
    except ValueError:
        raise ConfigError(f"{what} needs a number or B,G,R numbers, got {text!r}") from None
    return v[0] if len(v) == 1 else np.array(v, np.float32)


# =============================================================================== CLI
def main_explain(args) -> int:
    return run_toolbox(args.config, args.filelist, args.prefix, batch=args.batch,
                       progress=args.progress)


def main_heatmaps(args) -> int:
    return run_heatmaps(args)


def add_subcommands(sub) -> None:
    """Add ``explain`` and ``heatmaps`` to an argparse sub-parser collection."""
    import argparse

    from .composites import DEFAULT_RULES
    from .render import COLORMAPS, DEFAULT_CMAP, DEFAULT_PERCENTILE
    s = sub.add_parser("explain", help="toolbox heatmap tool: CONFIG FILELIST PREFIX",
                       description="The LRP toolbox's heatmap tool; see "
                                   "lrpfast.explain for the file formats.")
    s.add_argument("config")
    s.add_argument("filelist")
    s.add_argument("prefix", nargs="?", default="")
    s.add_argument("--batch", type=int, default=1, help="images per pass (default 1)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    s.set_defaults(func=main_explain)

    h = sub.add_parser("heatmaps", help="heatmaps from command-line options (no config file)",
                       description="Relevance heatmaps for images; see lrpfast.explain.")
    h.add_argument("--model", required=True, help="deploy prototxt, or an .onnx model")
    h.add_argument("--weights", default=None, help="caffemodel (with a prototxt --model)")
    h.add_argument("--images", required=True, nargs="+", help="image files or folders")
    h.add_argument("--out", required=True, help="output folder")
    h.add_argument("--rules", default=DEFAULT_RULES,
                   help=f"comma-separated composite names or toolbox:CODE[:EPS] (default "
                        f"{DEFAULT_RULES})")
    h.add_argument("--eps", type=float, default=None,
                   help="epsilon of the dense layers (and pooling/Eltwise stabiliser)")
    h.add_argument("--gamma", type=float, default=None, help="gamma of epsilon_gamma_box")
    h.add_argument("--low", default=None,
                   help="lowest input value(s) for the z^B rule of epsilon_gamma_box (a number "
                        "or B,G,R, in the net's input units after the mean)")
    h.add_argument("--high", default=None, help="highest input value(s), as --low")
    h.add_argument("--flat-layers", type=int, default=None,
                   help="first linear layers that get flat in *_flat composites (default 1)")
    h.add_argument("--classes", type=int, nargs="+", default=[-1],
                   help="-1 top-1, -2 top-5 summed, or class indices (several allowed)")
    m = h.add_mutually_exclusive_group()
    m.add_argument("--mean", help="B,G,R mean values")
    m.add_argument("--mean-file", help="mean image file")
    h.add_argument("--mean-kind", type=int, default=1, choices=(0, 1, 2),
                   help="mean file kind: 1 binaryproto BGR, 2 reversed, 0 text")
    h.add_argument("--resize", default="crop", choices=("crop", "pad", "resize"),
                   help="crop (default): short side to --size, centre crop; pad: the toolbox's "
                        "long side to --size, centre crop / edge pad; resize: to the input size")
    h.add_argument("--size", type=int, default=None,
                   help="side after resizing (short side for crop, long side for pad; default: "
                        "the net's input size)")
    h.add_argument("--formats", default="png,overlay,rawhm,input,top10",
                   help="any of png,overlay,rawhm,npy,input,top10")
    h.add_argument("--cmap", default=DEFAULT_CMAP, choices=sorted(COLORMAPS),
                   help=f"colour map (default {DEFAULT_CMAP})")
    h.add_argument("--norm", default="symmetric", choices=("symmetric", "positive", "toolbox"),
                   help="normalisation (default symmetric; toolbox + --cmap toolbox: the "
                        "toolbox's heatmap)")
    h.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                   help=f"clip the colour scale at this percentile of |R| (default "
                        f"{DEFAULT_PERCENTILE})")
    h.add_argument("--top", default=None,
                   help="layer or blob where relevance starts (default: the last InnerProduct "
                        "layer), e.g. mbox_conf for an SSD")
    h.add_argument("--skip-unsupported", action="store_true",
                   help="drop layers lrpfast cannot run (an SSD's PriorBox/DetectionOutput)")
    h.add_argument("--synsets", default=None, help="synset file for top10 names")
    h.add_argument("--batch", type=int, default=1,
                   help="images per engine pass (and per --store chunk; default 1)")
    h.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar with images/s and ETA (default: when stderr is a terminal)")
    h.add_argument("--preprocessing", default="caffe", choices=("caffe", "torchvision"),
                   help="caffe (default): BGR 0..255 minus --mean/--mean-file; torchvision: RGB "
                        "/255, minus --mean, / --std (default ImageNet's R,G,B statistics), "
                        "short side to --size (default 256), centre crop")
    h.add_argument("--std", default=None, help="R,G,B std on 0..1 (--preprocessing torchvision)")
    h.add_argument("--fast-decode", action="store_true",
                   help="decode big JPEGs at 1/2..1/8 scale, still covering the resize target "
                        "(pixels within a few grey levels of exact decoding; about two thirds "
                        "of its CPU for a 1.5 MP photo)")
    h.add_argument("--store", default=None,
                   help="also write a Zarr store of all relevance maps and the table there "
                        "(resumes an interrupted run of the same settings; needs zarr)")
    h.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                   help="the store's number type (default float32)")
    h.add_argument("--table", default=None,
                   help="the table (.csv, or .parquet with pyarrow); default <store>/table.csv")
    h.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue a --store of the same settings (default); --no-resume starts "
                        "over")
    h.add_argument("--boxes", default=None,
                   help="folder of VOC/ILSVRC XML files <image name>.xml: mu and mu_w columns")
    h.add_argument("--class-names", default=None,
                   help="class names, one a line (its first word: the XML <name>), for --boxes")
    h.add_argument("--scheduler", default=None,
                   help="a Dask scheduler address (tcp://host:8786): run on its workers (needs "
                        "lrpfast[dask] and --store on a file system all workers see)")
    h.add_argument("--ship-model", action="store_true",
                   help="with --scheduler: send the model files to the workers through Dask "
                        "(default: the workers read them at the same path)")
    h.add_argument("--threads", type=int, default=None,
                   help="engine threads (per worker with --scheduler)")
    h.add_argument("--decode-workers", type=int, default=None,
                   help="image decoding threads (default min(4, CPUs))")
    h.set_defaults(func=main_heatmaps)
