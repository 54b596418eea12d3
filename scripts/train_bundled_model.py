#!/usr/bin/env python
"""Train and export lrpfast's bundled demo model (a small Caffe CNN on cluttered digit scenes).

The task ("cluttered digits"): a scikit-learn digit (``sklearn.datasets.load_digits``, 8x8,
values 0..16), upscaled to 18..48 pixels (bicubic, soft threshold) and painted in a contrasting
colour onto a 64x64 RGB canvas that carries a random background texture (a smooth colour field
plus pixel noise) and distractors (random strokes, outlines, blobs and cut-off halves of other
digits), their amount set by a per-scene difficulty. Ten classes (the digit).
Every image has one ground-truth box (the tight box of the painted digit), written as PASCAL VOC
XML, so the localisation measures of Kohlbrenner et al. (2020) apply.

Digits are split once (seeded) into a training pool and a held-out pool; held-out scenes use only
held-out digits *and* a different scene seed, so a held-out image shares neither its digit nor its
clutter with training.

The network is trained with PyTorch (a development-only dependency, CPU) in the Caffe layout
(BGR planes, 0..255 minus a per-channel mean, scaled by 1/64 during training), with a BatchNorm
after each convolution and a curriculum (easy scenes first: a cluttered scene alone gives too
weak a signal for the net to start learning); at export the BatchNorms and the input scale are
folded into the convolutions, the model is written as Caffe prototxt + caffemodel with
``lrpfast.caffe.write_model`` and checked: lrpfast's forward pass must reproduce torch's logits.

Outputs (``--out``, default ``python/lrpfast/data``):

* ``digits_cnn.prototxt``, ``digits_cnn.caffemodel``, ``digits_cnn_mean.binaryproto``
* ``model.json`` (class names, mean, input layout, architecture, held-out accuracy)
* ``images/demo_XX.png`` + ``images/demo_XX.xml`` (held-out scenes with VOC boxes)
* ``tests/data/bundled_heldout_digits.npz``: the held-out digit pool (uint8 0..16), so that the
  test suite (which has no scikit-learn) generates fresh held-out scenes with :func:`make_split`

Usage::

    pip install torch==2.13.0 scikit-learn      # development only
    python scripts/train_bundled_model.py       # about 4-5 minutes on 2 CPU cores

Seeded throughout (digit split, scenes, initialisation, batches); with the same library
versions and thread count a rerun gives the same model.

Other scripts (``bench/eval_protocol.py``) import :func:`make_split` and :func:`write_voc` from
here to generate the held-out split.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

DIGIT_SPLIT_SEED = 20200          # which load_digits samples are training / held-out
HELDOUT_DIGIT_FRACTION = 0.25
SEEDS = {                         # scene seeds per split
    "train": 1,
    "val": 2,
    "heldout": 3,   # bench/eval_protocol.py --bundled
    "test": 4,      # tests/test_demo.py (fresh scenes from the shipped held-out digits)
    "demo": 5,      # python/lrpfast/data/images
}


# ============================================================================================
# data

def load_digit_pools(heldout_file=None):
    """(train_images, train_labels), (heldout_images, heldout_labels): load_digits split 75/25
    (seeded), images float32 (n, 8, 8) scaled to 0..1.

    ``heldout_file``: the shipped ``tests/data/bundled_heldout_digits.npz`` instead of
    scikit-learn; it holds the held-out pool only (the training pool is then None), enough for
    the held-out splits ("heldout", "test", "demo")."""
    if heldout_file is not None:
        z = np.load(heldout_file)
        return None, (z["digits"].astype(np.float32) / 16.0, z["labels"].astype(np.int64))
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = d.images.astype(np.float32) / 16.0
    labels = d.target.astype(np.int64)
    perm = np.random.default_rng(DIGIT_SPLIT_SEED).permutation(len(labels))
    n_held = int(round(len(labels) * HELDOUT_DIGIT_FRACTION))
    held, train = perm[:n_held], perm[n_held:]
    return (imgs[train], labels[train]), (imgs[held], labels[held])


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of a float (h0, w0) array with Pillow (mode F)."""
    from PIL import Image

    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(
        (w, h), Image.BILINEAR), dtype=np.float32)


def _glyph(d: np.ndarray, s: int) -> np.ndarray:
    """A digit (8x8, 0..1) as a crisp s x s alpha mask: bicubic upscale (x4, then to s) and a
    soft threshold, so that strokes have edges and the box interior shows the background."""
    from PIL import Image

    big = np.asarray(Image.fromarray(d.astype(np.float32), mode="F").resize(
        (32, 32), Image.BICUBIC), dtype=np.float32)
    v = _resize(big, s, s)
    return np.clip((v - 0.42) / 0.25, 0.0, 1.0)


def _smooth_field(rng, cells: int, size: int) -> np.ndarray:
    """A smooth random field in [0, 1] (size, size): a cells x cells grid upsampled bilinearly."""
    return np.clip(_resize(rng.random((cells, cells)), size, size), 0.0, 1.0)


def _paint(canvas: np.ndarray, alpha: np.ndarray, colour, y: int, x: int) -> None:
    """Alpha-blend ``colour`` with mask ``alpha`` (h, w) onto canvas (float RGB) at (y, x),
    clipping at the canvas border."""
    H, W = canvas.shape[:2]
    h, w = alpha.shape
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, H), min(x + w, W)
    if y1 <= y0 or x1 <= x0:
        return
    a = alpha[y0 - y:y1 - y, x0 - x:x1 - x, None]
    region = canvas[y0:y1, x0:x1]
    region[...] = region * (1.0 - a) + np.asarray(colour, np.float32)[None, None, :] * a


def _stroke_mask(rng, size: int) -> np.ndarray:
    """Alpha mask of a few random line segments / arcs (Pillow drawing)."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (size, size), 0)
    dr = ImageDraw.Draw(im)
    kind = rng.integers(3)
    width = int(rng.integers(1, 4))
    if kind == 0:                       # polyline
        pts = [tuple(int(v) for v in rng.integers(-8, size + 8, 2)) for _ in range(rng.integers(2, 5))]
        dr.line(pts, fill=255, width=width)
    elif kind == 1:                     # arc
        cx, cy = rng.integers(0, size, 2)
        r = int(rng.integers(5, 20))
        a0 = int(rng.integers(0, 360))
        dr.arc([int(cx - r), int(cy - r), int(cx + r), int(cy + r)], a0,
               a0 + int(rng.integers(60, 300)), fill=255, width=width)
    else:                               # rectangle outline
        x0, y0 = rng.integers(-4, size - 6, 2)
        x1, y1 = x0 + rng.integers(6, 24), y0 + rng.integers(6, 24)
        dr.rectangle([int(x0), int(y0), int(x1), int(y1)], outline=255, width=width)
    return np.asarray(im, dtype=np.float32) / 255.0


def _contrasting_colour(rng, under: np.ndarray, min_dist: float = 110.0) -> np.ndarray:
    """A random colour at least ``min_dist`` (RGB distance) away from the mean of ``under``."""
    ref = under.reshape(-1, 3).mean(axis=0) if under.size else np.full(3, 128.0)
    best, best_d = None, -1.0
    for _ in range(30):
        c = rng.uniform(0, 255, 3).astype(np.float32)
        d = float(np.linalg.norm(c - ref))
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def render_scene(rng, digit: np.ndarray, pool: np.ndarray, difficulty: float = 1.0,
                 size: int = SIZE):
    """One cluttered scene with ``digit`` (8x8 in 0..1) as the object.

    ``difficulty`` in [0, 1] scales the clutter: background texture contrast and noise, the
    number of distractors (strokes, outlines, blobs, halves of other digits) and how little the
    object's colour may differ from what lies under it.

    Returns (RGB uint8 (size, size, 3), box (xmin, ymin, xmax, ymax) 0-based inclusive).
    """
    d = float(difficulty)
    # background: base colour + smooth colour field + pixel noise
    base = rng.uniform(30, 225, 3).astype(np.float32)
    amp = rng.uniform(10, 20 + 60 * d)
    field = np.stack([_smooth_field(rng, int(rng.integers(3, 9)), size) for _ in range(3)], -1)
    canvas = base[None, None, :] + (field - 0.5) * 2 * amp
    canvas += rng.normal(0, rng.uniform(2, 2 + 10 * d), canvas.shape).astype(np.float32)
    canvas = np.clip(canvas, 0, 255).astype(np.float32)

    # object placement (decided first so that distractors can avoid most of it)
    s = int(rng.integers(18, 49))
    alpha = _glyph(digit, s)
    oy, ox = (int(v) for v in rng.integers(0, size - s + 1, 2))
    ys, xs = np.nonzero(alpha > 0.5)
    box = (ox + int(xs.min()), oy + int(ys.min()), ox + int(xs.max()), oy + int(ys.max()))

    def overlap(y, x, h, w):
        ix = max(0, min(x + w, box[2] + 1) - max(x, box[0]))
        iy = max(0, min(y + h, box[3] + 1) - max(y, box[1]))
        return ix * iy / float(h * w)

    def count(lo, hi):
        return int(rng.integers(0, int(round(lo + (hi - lo) * d)) + 1))

    # distractors: strokes / outlines, blobs, halves of other digits
    for _ in range(count(1, 5)):
        m = _stroke_mask(rng, size) * rng.uniform(0.6, 1.0)
        _paint(canvas, m, rng.uniform(0, 255, 3), 0, 0)
    for _ in range(count(0, 2)):
        r = int(rng.integers(3, 9))
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        blob = np.clip(1.0 - (yy ** 2 + xx ** 2) / float(r * r), 0, 1) ** 0.5
        _paint(canvas, blob * rng.uniform(0.5, 1.0), rng.uniform(0, 255, 3),
               int(rng.integers(-r, size - r)), int(rng.integers(-r, size - r)))
    for _ in range(count(0, 2)):
        other = pool[rng.integers(len(pool))]
        t = int(rng.integers(14, 41))
        a = _glyph(other, t)
        half = int(rng.integers(4))                    # keep one half: top/bottom/left/right
        if half == 0:
            a = a[: t // 2]
        elif half == 1:
            a = a[t // 2:]
        elif half == 2:
            a = a[:, : t // 2]
        else:
            a = a[:, t // 2:]
        h, w = a.shape
        for _try in range(12):
            y = int(rng.integers(-h // 3, size - 2 * h // 3))
            x = int(rng.integers(-w // 3, size - 2 * w // 3))
            if overlap(y, x, h, w) < 0.15:
                break
        _paint(canvas, a * rng.uniform(0.7, 1.0), rng.uniform(0, 255, 3), y, x)

    # the object, in a colour that contrasts with what lies under it
    under = canvas[oy:oy + s, ox:ox + s][alpha > 0.5]
    _paint(canvas, alpha, _contrasting_colour(rng, under, 170.0 - 70.0 * d), oy, ox)
    img = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return img, box


#: difficulty range of each split: training covers easy to hard scenes (easy ones let the net
#: start learning); every evaluation split holds cluttered scenes only.
DIFFICULTY = {"train": (0.0, 1.0), "val": (0.5, 1.0), "heldout": (0.5, 1.0),
              "test": (0.5, 1.0), "demo": (0.7, 1.0)}


def make_split(split: str, n: int, pools=None, seed: int | None = None) -> dict:
    """``n`` scenes of a split ("train", "val" use training digits; "heldout", "test", "demo"
    use held-out digits), seeded by ``SEEDS[split]`` (or ``seed``), with difficulties drawn
    uniformly from ``DIFFICULTY[split]``.

    Returns {"images": uint8 (n, 64, 64, 3) RGB, "labels": int64 (n,), "boxes": int64 (n, 4)
    0-based inclusive (xmin, ymin, xmax, ymax), "difficulty": float (n,)}. Classes are
    balanced (cycled, then shuffled).
    """
    if pools is None:
        pools = load_digit_pools()
    if split in ("train", "val"):
        if pools[0] is None:
            raise ValueError(f"split {split!r} needs the training digits (scikit-learn)")
        digits, dlabels = pools[0]
    else:
        digits, dlabels = pools[1]
    rng = np.random.default_rng(SEEDS[split] if seed is None else seed)
    lo, hi = DIFFICULTY[split]
    by_class = [np.flatnonzero(dlabels == c) for c in range(10)]
    labels = rng.permutation(np.arange(n) % 10)
    diff = rng.uniform(lo, hi, n)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    boxes = np.empty((n, 4), np.int64)
    for i, c in enumerate(labels):
        d = digits[rng.choice(by_class[c])]
        if rng.random() < 0.5:                           # mild shape augmentation: shear
            d = _shear(d, rng.uniform(-0.25, 0.25))
        images[i], boxes[i] = render_scene(rng, d, digits, diff[i])
    return {"images": images, "labels": labels.astype(np.int64), "boxes": boxes,
            "difficulty": diff}


def _shear(d: np.ndarray, k: float) -> np.ndarray:
    """Horizontal shear of an 8x8 digit (upsampled x4 first to keep strokes), back to 16x16."""
    from PIL import Image

    big = _resize(d, 32, 32)
    im = Image.fromarray(big, mode="F").transform(
        (32, 32), Image.AFFINE, (1, k, -k * 16, 0, 1, 0), resample=Image.BILINEAR)
    return np.clip(_resize(np.asarray(im, np.float32), 16, 16), 0, 1)


# --------------------------------------------------------------------------------------------
# VOC files

def voc_xml(filename: str, size, boxes, names, folder: str = "lrpfast_digits") -> str:
    """A PASCAL VOC annotation (1-based inclusive coordinates) for 0-based inclusive boxes."""
    W, H = size
    objs = []
    for (x0, y0, x1, y1), name in zip(boxes, names):
        objs.append(
            "  <object>\n"
            f"    <name>{escape(name)}</name>\n    <pose>Unspecified</pose>\n"
            "    <truncated>0</truncated>\n    <difficult>0</difficult>\n"
            "    <bndbox>\n"
            f"      <xmin>{int(x0) + 1}</xmin>\n      <ymin>{int(y0) + 1}</ymin>\n"
            f"      <xmax>{int(x1) + 1}</xmax>\n      <ymax>{int(y1) + 1}</ymax>\n"
            "    </bndbox>\n  </object>\n")
    return ("<annotation>\n"
            f"  <folder>{escape(folder)}</folder>\n  <filename>{escape(filename)}</filename>\n"
            f"  <size>\n    <width>{W}</width>\n    <height>{H}</height>\n"
            "    <depth>3</depth>\n  </size>\n  <segmented>0</segmented>\n"
            + "".join(objs) + "</annotation>\n")


def write_voc(root, data: dict, prefix: str = "heldout", image_set: str = "test") -> list:
    """Write a split in the PASCAL VOC layout: ``JPEGImages/<id>.png`` (lossless PNG; the
    folder keeps VOC's name), ``Annotations/<id>.xml``, ``ImageSets/Main/<image_set>.txt``.
    Returns the ids."""
    from PIL import Image

    root = Path(root)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    ids = []
    for i, (img, lab, box) in enumerate(zip(data["images"], data["labels"], data["boxes"])):
        iid = f"{prefix}_{i:05d}"
        Image.fromarray(img).save(root / "JPEGImages" / f"{iid}.png")
        (root / "Annotations" / f"{iid}.xml").write_text(
            voc_xml(f"{iid}.png", (img.shape[1], img.shape[0]), [box], [CLASS_NAMES[lab]]))
        ids.append(iid)
    (root / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(ids) + "\n")
    return ids


# ============================================================================================
# model

PROTOTXT = """name: "lrpfast_digits_cnn"
# lrpfast's bundled demo model: 10-class digit recognition in cluttered 64x64 scenes
# (scripts/train_bundled_model.py). Input: BGR planes, 0..255 minus the per-channel mean
# (model.json / digits_cnn_mean.binaryproto).
input: "data"
input_shape { dim: 1 dim: 3 dim: 64 dim: 64 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 32 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
  convolution_param { num_output: 64 kernel_size: 3 pad: 1 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "pool3" type: "Pooling" bottom: "conv3" top: "pool3"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv4" type: "Convolution" bottom: "pool3" top: "conv4"
  convolution_param { num_output: 64 kernel_size: 3 pad: 1 } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "pool4" type: "Pooling" bottom: "conv4" top: "pool4"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "fc5" type: "InnerProduct" bottom: "pool4" top: "fc5"
  inner_product_param { num_output: 64 } }
layer { name: "relu5" type: "ReLU" bottom: "fc5" top: "fc5" }
layer { name: "drop5" type: "Dropout" bottom: "fc5" top: "fc5"
  dropout_param { dropout_ratio: 0.3 } }
layer { name: "fc6" type: "InnerProduct" bottom: "fc5" top: "fc6"
  inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc6" top: "prob" }
"""

ARCHITECTURE = ("conv1 3x3x16 pad1-ReLU-maxpool2 | conv2 3x3x32 pad1-ReLU-maxpool2 | "
                "conv3 3x3x64 pad1-ReLU-maxpool2 | conv4 3x3x64 pad1-ReLU-avepool2 | "
                "fc5 1024->64-ReLU-Dropout(0.3) | fc6 64->10 | Softmax")

INPUT_SCALE = 1.0 / 64.0   # torch trains on (x - mean) / 64; folded into conv1 at export


def build_torch_model():
    """The training twin of PROTOTXT: each convolution is followed by a BatchNorm, which is
    folded into the convolution at export (the Caffe model has none)."""
    from collections import OrderedDict

    from torch import nn

    layers = []
    chans = [3, 16, 32, 64, 64]
    for k in range(1, 5):
        layers += [(f"conv{k}", nn.Conv2d(chans[k - 1], chans[k], 3, padding=1)),
                   (f"bn{k}", nn.BatchNorm2d(chans[k])), (f"relu{k}", nn.ReLU()),
                   (f"pool{k}", nn.MaxPool2d(2, 2) if k < 4 else nn.AvgPool2d(2, 2))]
    layers += [("flatten", nn.Flatten()), ("fc5", nn.Linear(64 * 4 * 4, 64)),
               ("relu5", nn.ReLU()), ("drop5", nn.Dropout(0.3)), ("fc6", nn.Linear(64, 10))]
    return nn.Sequential(OrderedDict(layers))


def to_caffe_input(rgb: np.ndarray, mean_bgr) -> np.ndarray:
    """uint8 RGB (N, H, W, 3) -> float32 (N, 3, H, W) BGR minus the per-channel mean."""
    x = rgb[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
    return x - np.asarray(mean_bgr, np.float32)[None, :, None, None]


def export_weights(model) -> dict:
    """Trained torch model (eval mode) -> {caffe layer name: [weight, bias]} float32, with each
    BatchNorm folded into its convolution and the input scale folded into conv1."""
    out = {}
    for k in range(1, 5):
        conv, bn = getattr(model, f"conv{k}"), getattr(model, f"bn{k}")
        w = conv.weight.detach().double().numpy()
        b = conv.bias.detach().double().numpy()
        g = bn.weight.detach().double().numpy() / np.sqrt(bn.running_var.double().numpy()
                                                          + bn.eps)
        w = w * g[:, None, None, None]
        b = (b - bn.running_mean.double().numpy()) * g + bn.bias.detach().double().numpy()
        if k == 1:
            w = w * INPUT_SCALE
        out[f"conv{k}"] = [w.astype(np.float32), b.astype(np.float32)]
    for name in ("fc5", "fc6"):
        m = getattr(model, name)
        out[name] = [m.weight.detach().numpy().astype(np.float32),
                     m.bias.detach().numpy().astype(np.float32)]
    return out


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def train(args, pools):
    """Train with a curriculum: the training scenes are sorted by difficulty and step t draws
    its batch from the easiest fraction 0.1 + 0.9 * t / (ramp * steps) of them (all of them
    after the ramp); Adam, constant rate then a cosine decay over the last 40 % of the steps."""
    import math

    import torch
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    tr = make_split("train", args.n_train, pools)
    va = make_split("val", args.n_val, pools)
    print(f"generated {args.n_train} training + {args.n_val} validation scenes "
          f"in {time.time() - t0:.1f} s", flush=True)
    mean_bgr = tr["images"][..., ::-1].reshape(-1, 3).astype(np.float64).mean(axis=0)
    order = np.argsort(tr["difficulty"], kind="stable")
    # uint8 BGR planes, converted per batch (keeps memory at 1 byte per value)
    xtr = torch.from_numpy(np.ascontiguousarray(
        tr["images"][order][..., ::-1].transpose(0, 3, 1, 2)))
    ytr = torch.from_numpy(tr["labels"][order])
    del tr
    mean_t = torch.tensor(np.asarray(mean_bgr, np.float32)).view(1, 3, 1, 1)
    xva = torch.from_numpy(to_caffe_input(va["images"], mean_bgr) * INPUT_SCALE)

    model = build_torch_model().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps, n = args.steps, len(ytr)

    def rate(t):
        f = t / steps
        return 1.0 if f < 0.6 else 0.5 * (1.0 + math.cos(math.pi * (f - 0.6) / 0.4))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    g = torch.Generator().manual_seed(args.seed)
    running = None
    for t in range(steps):
        model.train()
        frac = min(1.0, 0.1 + 0.9 * t / (args.ramp * steps))
        idx = torch.randint(0, max(args.batch, int(frac * n)), (args.batch,), generator=g)
        xb = ((xtr[idx].float() - mean_t) * INPUT_SCALE).contiguous(
            memory_format=torch.channels_last)
        loss = F.cross_entropy(model(xb), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        lv = float(loss.detach())
        running = lv if running is None else 0.98 * running + 0.02 * lv
        if (t + 1) % args.log_every == 0 or t + 1 == steps:
            model.eval()
            with torch.no_grad():
                va_acc = accuracy(model(xva).numpy(), va["labels"])
            print(f"step {t + 1}/{steps}: curriculum {frac:.2f}, loss {running:.3f}, "
                  f"val acc {va_acc:.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    return model, mean_bgr, time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "python" / "lrpfast" / "data"))
    ap.add_argument("--tests-data", default=str(ROOT / "tests" / "data"))
    ap.add_argument("--n-train", type=int, default=30000)
    ap.add_argument("--n-val", type=int, default=1000)
    ap.add_argument("--n-heldout", type=int, default=2000, help="scenes for the accuracy")
    ap.add_argument("--n-test", type=int, default=300,
                    help="scenes the tests generate (make_split('test', n))")
    ap.add_argument("--n-demo", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--ramp", type=float, default=0.4, help="curriculum ramp (fraction of steps)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--log-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)

    import torch

    sys.path.insert(0, str(ROOT / "python"))
    import lrpfast
    from lrpfast import caffe

    pools = load_digit_pools()
    model, mean_bgr, train_s = train(args, pools)
    model.eval()

    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    weights = export_weights(model)
    proto, cm = caffe.write_model(out / "digits_cnn", PROTOTXT, weights)
    mean_img = np.broadcast_to(np.asarray(mean_bgr, np.float32)[None, :, None, None],
                               (1, 3, SIZE, SIZE))
    caffe.write_binaryproto(out / "digits_cnn_mean.binaryproto", np.ascontiguousarray(mean_img))

    # held-out accuracy, torch vs lrpfast
    ho = make_split("heldout", args.n_heldout, pools)
    x = to_caffe_input(ho["images"], mean_bgr)
    with torch.no_grad():
        lt = model(torch.from_numpy(x * INPUT_SCALE)).double().numpy()
    net = lrpfast.Net(proto, cm)
    ll = net.forward(x, blobs=["fc6"])["fc6"]
    diff = float(np.max(np.abs(lt - ll)))
    acc_t, acc = accuracy(lt, ho["labels"]), accuracy(ll, ho["labels"])
    print(f"held-out accuracy ({args.n_heldout} scenes of held-out digits): torch {acc_t:.4f}, "
          f"lrpfast {acc:.4f}; max |logit diff| torch vs lrpfast = {diff:.2e} "
          f"(logit scale {np.abs(lt).max():.1f})")
    if diff > 1e-3 * max(1.0, float(np.abs(lt).max())):
        print("ERROR: the exported Caffe model does not reproduce torch's logits", file=sys.stderr)
        return 1

    # demo images (held-out digits, their own seed) and the tests' held-out batch
    demo = make_split("demo", args.n_demo, pools)
    dl = net.forward(to_caffe_input(demo["images"], mean_bgr), blobs=["fc6"])["fc6"]
    from PIL import Image
    for f in (out / "images").glob("demo_*"):
        f.unlink()
    for i, (img, lab, box) in enumerate(zip(demo["images"], demo["labels"], demo["boxes"])):
        name = f"demo_{i:02d}"
        Image.fromarray(img).save(out / "images" / f"{name}.png", optimize=True)
        (out / "images" / f"{name}.xml").write_text(
            voc_xml(f"{name}.png", (SIZE, SIZE), [box], [CLASS_NAMES[lab]], folder="images"))
    print(f"demo images: labels {demo['labels'].tolist()}, predicted "
          f"{np.argmax(dl, 1).tolist()}")

    te = make_split("test", args.n_test, pools)
    tl = net.forward(to_caffe_input(te["images"], mean_bgr), blobs=["fc6"])["fc6"]
    acc_test = accuracy(tl, te["labels"])
    tdir = Path(args.tests_data)
    tdir.mkdir(parents=True, exist_ok=True)
    ho_x, ho_y = pools[1]
    np.savez_compressed(tdir / "bundled_heldout_digits.npz",
                        digits=np.rint(ho_x * 16).astype(np.uint8), labels=ho_y.astype(np.uint8))
    print(f"tests batch: {args.n_test} scenes, accuracy {acc_test:.4f}")

    info = {
        "name": "lrpfast_digits_cnn",
        "description": "10-class digit recognition in cluttered 64x64 RGB scenes (sklearn "
                       "digits on textured backgrounds with distractors); lrpfast's demo model",
        "prototxt": os.path.basename(proto),
        "caffemodel": os.path.basename(cm),
        "mean_file": "digits_cnn_mean.binaryproto",
        "images": "images",
        "input": {"blob": "data", "shape": [1, 3, SIZE, SIZE], "channel_order": "BGR",
                  "range": "0..255 minus mean_bgr", "mean_bgr": [round(float(v), 4)
                                                                  for v in mean_bgr]},
        "top_layer": "fc6",
        "class_names": CLASS_NAMES,
        "architecture": ARCHITECTURE,
        "parameters": int(sum(w.size for ws in weights.values() for w in ws)),
        "accuracy": {"heldout": round(acc, 4), "heldout_n": args.n_heldout,
                     "heldout_seed": SEEDS["heldout"], "tests_batch": round(acc_test, 4),
                     "tests_batch_n": args.n_test, "val_seen_digits": None},
        "training": {"script": "scripts/train_bundled_model.py", "framework":
                     f"torch {torch.__version__} (CPU)", "n_train": args.n_train,
                     "steps": args.steps, "curriculum_ramp": args.ramp, "batch": args.batch, "lr": args.lr,
                     "seed": args.seed, "seconds": round(train_s, 1),
                     "digit_split_seed": DIGIT_SPLIT_SEED, "scene_seeds": SEEDS,
                     "difficulty": DIFFICULTY},
        "export_check": {"max_abs_logit_diff_torch_vs_lrpfast": diff},
    }
    va = make_split("val", args.n_val, pools)
    vl = net.forward(to_caffe_input(va["images"], mean_bgr), blobs=["fc6"])["fc6"]
    info["accuracy"]["val_seen_digits"] = round(accuracy(vl, va["labels"]), 4)
    (out / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    for f in sorted(out.rglob("*")):
        if f.is_file():
            print(f"  {f.relative_to(ROOT) if f.is_relative_to(ROOT) else f}: "
                  f"{f.stat().st_size / 1024:.1f} KiB")
    print(f"tests data: {(tdir / 'bundled_heldout_digits.npz').stat().st_size / 1024:.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
