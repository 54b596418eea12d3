#!/usr/bin/env python
"""The evaluation protocol of Kohlbrenner et al. (2020) for lrpfast.

For every (image, class present in its annotation) pair, explain the class's logit with each
rule / composite, sum the relevance over colour channels and score it against the union of the
class's boxes:

* mu = R_in / R_tot (positive relevance inside the boxes / in the image),
* mu_w = mu * S_tot / S_in (a uniform map scores 1).

Outputs (``--results``, default ``bench/results``):

* ``eval_<tag>.md``: Table 1 (mean mu_w, mean mu over samples with box area <= 25 % and <= 50 %,
  mean mu; rows ordered by mu_w; a uniform-map baseline row), the paper's numbers beside it;
* ``eval_<tag>_fig3_mu_by_box_size.png``: mean mu against relative box size in 100 bins (Fig. 3);
* ``eval_<tag>_fig2_occlusion.png``: drop of the true-class logit when the object (inside the
  boxes) or the context (outside) is replaced by the training-set mean, against the occluded
  area (Fig. 2);
* ``eval_<tag>.json``: all numbers (per rule and per sample).

Data: a PASCAL-VOC-layout folder (``JPEGImages/``, ``Annotations/``, ``ImageSets/Main/<set>.txt``)
and a model description JSON like the bundled ``lrpfast/data/model.json`` (prototxt, caffemodel,
class_names, input mean_bgr). Images are resized (long side = the net's input size unless
``--base-size``), centre-cropped / edge-padded to the net's input (the toolbox's pre-processing);
the boxes follow the same geometry (``lrpfast.boxes``).

    python bench/eval_protocol.py --bundled                 # held-out split of the bundled task
    python bench/eval_protocol.py --voc /data/VOC2007 --image-set test --model my_model.json

``--bundled`` generates the held-out split of the bundled model's task (seeded; needs
scikit-learn, see scripts/train_bundled_model.py) into a temporary VOC-layout folder.
matplotlib is not needed: the plots are drawn with Pillow.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

RULES = ("z", "alpha1beta0", "alpha2beta1", "cmp_alpha1", "cmp_alpha2", "cmp_alpha1_flat",
         "cmp_alpha2_flat", "cmp_alpha2_box", "guided_backprop")

LABELS = {"z": "LRP-z", "alpha1beta0": "LRP α1β0", "alpha2beta1": "LRP α2β1",
          "cmp_alpha1": "LRP CMP α1", "cmp_alpha2": "LRP CMP α2",
          "cmp_alpha1_flat": "LRP CMP α1 + flat", "cmp_alpha2_flat": "LRP CMP α2 + flat",
          "cmp_alpha2_box": "LRP CMP α2 + z^B",
          "guided_backprop": "Guided backprop", "baseline": "uniform baseline"}

#: The paper's Table 1 mu_w. "CMP α2+b" is the composite with flat (box /
#: flat) on the first layers, i.e. cmp_alpha2_flat here.
PAPER_VGG16 = {"cmp_alpha2_flat": 1.902, "cmp_alpha2": 1.797, "cmp_alpha1": 1.704,
               "alpha2beta1": 1.702, "guided_backprop": 1.640, "alpha1beta0": 1.609,
               "z": 1.347, "baseline": 1.000}
PAPER_CAFFENET_VOC = {"cmp_alpha2_flat": 2.716, "cmp_alpha1": 2.664, "z": 2.128,
                      "alpha1beta0": 1.486}

COLOURS = {"z": (120, 120, 120), "alpha1beta0": (31, 119, 180), "alpha2beta1": (23, 190, 207),
           "cmp_alpha1": (255, 127, 14), "cmp_alpha2": (214, 39, 40),
           "cmp_alpha1_flat": (188, 189, 34), "cmp_alpha2_flat": (148, 103, 189),
           "cmp_alpha2_box": (227, 119, 194),
           "guided_backprop": (44, 160, 44), "baseline": (0, 0, 0)}


# ============================================================================================
# data

def _find_image(root: Path, iid: str) -> Path:
    for ext in (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG", ".bmp"):
        p = root / "JPEGImages" / f"{iid}{ext}"
        if p.is_file():
            return p
    raise FileNotFoundError(f"no image for id {iid!r} in {root / 'JPEGImages'}")


def _preprocess_rgb(rgb: np.ndarray, size: int, base: int):
    """Resize (long side = base, aspect kept, toolbox rounding), centre crop / edge pad to
    size x size. Returns uint8 (size, size, 3) and the geometry's arguments."""
    from lrpfast.boxes import preprocess_geometry
    from PIL import Image

    H, W = rgb.shape[:2]
    g = preprocess_geometry((W, H), base, size)
    rw, rh = g.resized
    im = rgb if (rw, rh) == (W, H) else np.asarray(
        Image.fromarray(rgb).resize((rw, rh), Image.BILINEAR))
    out = im
    for axis, (n, o) in enumerate(((rh, g.offset[1]), (rw, g.offset[0]))):
        if n >= size:                                  # crop: offset = -start
            start = int(-o)
            out = out[start:start + size] if axis == 0 else out[:, start:start + size]
        else:                                          # pad with repeated edge pixels
            before = int(o)
            after = size - n - before
            pad = [(0, 0)] * 3
            pad[axis] = (before, after)
            out = np.pad(out, pad, mode="edge")
    return np.ascontiguousarray(out, dtype=np.uint8), (W, H)


def load_voc(root, image_set: str, class_names, size: int, base: int | None = None,
             limit: int | None = None, include_difficult: bool = False):
    """Samples of a VOC-layout folder: one per (image, class of the model present in it).

    Returns (rgb uint8 (N, size, size, 3), labels int (N,), masks bool (N, size, size), ids,
    skipped: {reason: count})."""
    from lrpfast.boxes import class_mask, read_voc
    from PIL import Image

    root = Path(root)
    lst = root / "ImageSets" / "Main" / f"{image_set}.txt"
    if not lst.is_file():
        raise FileNotFoundError(f"image list {lst} not found")
    ids = [ln.split()[0] for ln in lst.read_text().splitlines() if ln.strip()]
    if limit:
        ids = ids[:limit]
    base = base or size
    rgbs, labels, masks, out_ids = [], [], [], []
    skipped: dict = {}
    for iid in ids:
        ann = read_voc(root / "Annotations" / f"{iid}.xml")
        with Image.open(_find_image(root, iid)) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        x, orig = _preprocess_rgb(rgb, size, base)
        present = []
        for o in ann["objects"]:
            if o["name"] not in class_names:
                skipped["class not in the model"] = skipped.get("class not in the model", 0) + 1
            elif include_difficult or not o.get("difficult", 0):
                if o["name"] not in present:
                    present.append(o["name"])
        for name in present:
            m = class_mask(ann, name, base, size, include_difficult, orig_size=orig)
            if not m.any():
                skipped["box outside the crop"] = skipped.get("box outside the crop", 0) + 1
                continue
            rgbs.append(x)
            labels.append(class_names.index(name))
            masks.append(m)
            out_ids.append(f"{iid}:{name}")
    if not rgbs:
        raise ValueError(f"no usable samples in {root} ({image_set}); skipped: {skipped}")
    return np.stack(rgbs), np.asarray(labels), np.stack(masks), out_ids, skipped


def generate_bundled(folder: Path, n: int) -> dict:
    """The bundled task's held-out split (scripts/train_bundled_model.py, seed 'heldout')
    written in the VOC layout; returns the split's arrays."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_bundled_model as T
    except ImportError as e:
        raise SystemExit(f"--bundled needs scripts/train_bundled_model.py and scikit-learn "
                         f"({e}); pip install scikit-learn") from None
    data = T.make_split("heldout", n)
    T.write_voc(folder, data, prefix="heldout", image_set="test")
    return data


# ============================================================================================
# evaluation

def make_rule(name: str, info: dict):
    """A composite by name; ``cmp_alpha2_box`` = cmp_alpha2 with the z^B rule on the first
    layer, bounded by the input range (0..255 minus the mean)."""
    import lrpfast

    if name == "cmp_alpha2_box":
        mean = np.asarray(info["input"]["mean_bgr"], np.float32)
        c = lrpfast.composite("cmp_alpha2")
        c.first = (1, lrpfast.rules.ZBox(-mean, 255.0 - mean))
        c.name = name
        return c
    return name


def evaluate(net, x, labels, masks, rules, top, info, log=print):
    """Per-rule per-sample mu / mu_w (lrpfast.metrics.evaluate) and timings."""
    from lrpfast import metrics

    res = {}
    for rule in rules:
        t0 = time.perf_counter()
        R = net.relevance(x, [int(c) for c in labels], rules=make_rule(rule, info), top=top)
        dt = time.perf_counter() - t0
        ev = metrics.evaluate(R.sum(axis=1), masks)
        row = metrics.table_row(ev["mu"], ev["mu_w"], ev["box_fraction"])
        res[rule] = {"row": row, "mu": ev["mu"], "mu_w": ev["mu_w"],
                     "fraction": ev["box_fraction"], "n_undefined": ev["n_undefined"],
                     "seconds": dt}
        log(f"  {rule:<17} mu_w {row['mu_w']:.3f}  mu {row['mu']:.3f}  "
            f"({dt:.1f} s, {len(labels) / dt:.0f} img/s)")
    return res


def occlusion(net, x, labels, masks, top, fill=0.0):
    """lrpfast.metrics.occlusion_drop for every sample (fill 0 = the training mean in the
    mean-subtracted input)."""
    from lrpfast import metrics

    def logits(batch):
        return net.forward(batch, blobs=[top])[top].reshape(len(batch), -1)

    return [metrics.occlusion_drop(logits, x[i], masks[i], int(labels[i]), fill)
            for i in range(len(labels))]


# ============================================================================================
# plots (Pillow only)

def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:                                   # Pillow < 10.1
        return ImageFont.load_default()


class _Plot:
    """A minimal line / scatter chart on a Pillow canvas."""

    def __init__(self, w, h, xlim, ylim, title, xlabel, ylabel):
        from PIL import Image, ImageDraw

        self.im = Image.new("RGB", (w, h), (255, 255, 255))
        self.d = ImageDraw.Draw(self.im)
        self.f, self.fs = _font(14), _font(12)
        self.l, self.r, self.t, self.b = 70, w - 20, 40, h - 55
        self.xlim, self.ylim = xlim, ylim
        d, f = self.d, self.fs
        d.text(((self.l + self.r) // 2, 12), title, fill=(0, 0, 0), font=self.f, anchor="mt")
        d.text(((self.l + self.r) // 2, h - 18), xlabel, fill=(0, 0, 0), font=f, anchor="mm")
        lab = self._rotated(ylabel)
        self.im.paste(lab, (8, (self.t + self.b) // 2 - lab.size[1] // 2))
        for v in self._ticks(*xlim):
            X = self.X(v)
            d.line([(X, self.t), (X, self.b)], fill=(232, 232, 232))
            d.text((X, self.b + 5), f"{v:g}", fill=(0, 0, 0), font=f, anchor="mt")
        for v in self._ticks(*ylim):
            Y = self.Y(v)
            d.line([(self.l, Y), (self.r, Y)], fill=(232, 232, 232))
            d.text((self.l - 6, Y), f"{v:g}", fill=(0, 0, 0), font=f, anchor="rm")
        d.rectangle([self.l, self.t, self.r, self.b], outline=(0, 0, 0))
        self.legend = []

    def _rotated(self, text):
        from PIL import Image, ImageDraw

        w = int(self.d.textlength(text, font=self.fs)) + 4
        im = Image.new("RGB", (w, 16), (255, 255, 255))
        ImageDraw.Draw(im).text((2, 1), text, fill=(0, 0, 0), font=self.fs)
        return im.rotate(90, expand=True)

    @staticmethod
    def _ticks(lo, hi, n=6):
        step = 10 ** math.floor(math.log10((hi - lo) / n))
        for m in (1, 2, 2.5, 5, 10):
            if (hi - lo) / (step * m) <= n:
                step *= m
                break
        v = math.ceil(lo / step) * step
        out = []
        while v <= hi + 1e-9:
            out.append(round(v, 10))
            v += step
        return out

    def X(self, v):
        return self.l + (v - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * (self.r - self.l)

    def Y(self, v):
        return self.b - (v - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * (self.b - self.t)

    def _clip(self, x, y):
        return (min(max(self.X(x), self.l), self.r), min(max(self.Y(y), self.t), self.b))

    def line(self, xs, ys, colour, label=None, width=2, dash=False):
        seg = []
        for x, y in list(zip(xs, ys)) + [(None, None)]:
            if x is None or y is None or not np.isfinite(y):
                if len(seg) > 1:
                    if dash:
                        for a, b in zip(seg[:-1:2], seg[1::2]):
                            self.d.line([a, b], fill=colour, width=width)
                    else:
                        self.d.line(seg, fill=colour, width=width)
                elif len(seg) == 1:
                    x0, y0 = seg[0]
                    self.d.ellipse([x0 - 2, y0 - 2, x0 + 2, y0 + 2], fill=colour)
                seg = []
            else:
                seg.append(self._clip(x, y))
        if label:
            self.legend.append((label, colour))

    def points(self, xs, ys, colour, label=None, r=1.5):
        c = tuple(int(255 - (255 - v) * 0.45) for v in colour)    # light shade
        for x, y in zip(xs, ys):
            if np.isfinite(y):
                X, Y = self._clip(x, y)
                self.d.ellipse([X - r, Y - r, X + r, Y + r], fill=c)
        if label:
            self.legend.append((label, c))

    def save(self, path, corner="tr"):
        if self.legend:
            w = max(int(self.d.textlength(s, font=self.fs)) for s, _ in self.legend) + 34
            h = 16 * len(self.legend) + 8
            x0 = self.r - w - 8 if corner.endswith("r") else self.l + 8
            y0 = self.t + 8 if corner.startswith("t") else self.b - h - 8
            self.d.rectangle([x0, y0, x0 + w, y0 + h], fill=(255, 255, 255), outline=(160, 160, 160))
            for k, (s, c) in enumerate(self.legend):
                y = y0 + 12 + 16 * k
                self.d.line([(x0 + 6, y), (x0 + 24, y)], fill=c, width=3)
                self.d.text((x0 + 30, y), s, fill=(0, 0, 0), font=self.fs, anchor="lm")
        self.im.save(path, optimize=True)


def plot_fig3(res, rules, path, bins=100):
    from lrpfast import metrics

    fr = next(iter(res.values()))["fraction"]
    hi = min(1.0, math.ceil(float(np.nanmax(fr)) * 10 + 0.5) / 10)
    p = _Plot(760, 480, (0.0, hi), (0.0, 1.0), "Fig. 3: mean μ against box size "
              f"({bins} bins; {len(fr)} samples)", "box size (S_in / S_tot)",
              "mean μ (positive relevance in the box)")
    for rule in rules:
        c, m, _ = metrics.mu_by_box_size(res[rule]["mu"], res[rule]["fraction"], bins)
        keep = c <= hi
        p.line(c[keep], m[keep], COLOURS[rule], LABELS[rule], width=2)
    p.line([0, hi], [0, hi], COLOURS["baseline"], "uniform map (μ = box size)", width=1,
           dash=True)
    p.save(path, corner="br")


def plot_fig2(occ, path, bins=20):
    oa = np.array([o["object_area"] for o in occ])
    od = np.array([o["object_drop"] for o in occ])
    ca = np.array([o["context_area"] for o in occ])
    cd = np.array([o["context_drop"] for o in occ])
    allv = np.concatenate([od, cd])
    lo, hi = float(np.percentile(allv, 0.5)), float(np.percentile(allv, 99.5))
    pad = 0.05 * (hi - lo)
    p = _Plot(760, 480, (0.0, 1.0), (min(0.0, lo - pad), hi + pad),
              f"Fig. 2: true-class logit drop under occlusion ({len(occ)} samples)",
              "occluded area (fraction of the image)", "logit(original) - logit(occluded)")
    p.points(oa, od, (214, 39, 40), None)
    p.points(ca, cd, (31, 119, 180), None)
    edges = np.linspace(0, 1, bins + 1)
    cen = (edges[:-1] + edges[1:]) / 2
    for a, dd, colour, label in ((oa, od, (214, 39, 40), "object occluded (bin mean)"),
                                 (ca, cd, (31, 119, 180), "context occluded (bin mean)")):
        idx = np.clip(np.digitize(a, edges) - 1, 0, bins - 1)
        means = np.array([dd[idx == k].mean() if np.any(idx == k) else np.nan
                          for k in range(bins)])
        p.line(cen, means, colour, label, width=3)
    p.line([0, 1], [0, 0], (0, 0, 0), None, width=1)
    p.save(path, corner="tr")


# ============================================================================================
# report

def _kendall(a, b):
    """Kendall's tau between two score dicts on their common keys (ties count 0)."""
    keys = [k for k in a if k in b]
    s, n = 0, 0
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            x = np.sign(a[keys[i]] - a[keys[j]]) * np.sign(b[keys[i]] - b[keys[j]])
            s += x
            n += 1
    return (s / n if n else float("nan")), keys


def markdown(res, rules, occ, meta) -> str:
    rows = sorted(rules, key=lambda r: -res[r]["row"]["mu_w"])
    fr = next(iter(res.values()))["fraction"]
    base = {"mu_w": 1.0, "mu_le_025": float(np.mean(fr[fr <= 0.25])) if np.any(fr <= 0.25)
            else float("nan"),
            "mu_le_05": float(np.mean(fr[fr <= 0.5])) if np.any(fr <= 0.5) else float("nan"),
            "mu": float(np.mean(fr))}
    L = [f"Data: {meta['data']}; {meta['n']} samples, box size {np.min(fr):.3f}..{np.max(fr):.3f}"
         f" of the image (mean {np.mean(fr):.3f}; {int(np.sum(fr <= 0.25))} with ≤ 25 %, "
         f"{int(np.sum(fr <= 0.5))} with ≤ 50 %). Model: {meta['model']}; accuracy on these "
         f"samples {meta['accuracy']:.1%}. Heatmaps for the true class; relevance summed over "
         f"colour channels; positive relevance only.", "",
         "| method | μ_w (± s.e.) | μ≤0.25 | μ≤0.5 | μ | paper μ_w (VGG-16, ImageNet) | "
         "paper μ_w (CaffeNet, VOC07) |", "|---|---:|---:|---:|---:|---:|---:|"]

    def fmt(v):
        return "–" if v is None or not np.isfinite(v) else f"{v:.3f}"

    def sem(r):
        if r == "baseline":
            return ""
        v = res[r]["mu_w"][np.isfinite(res[r]["mu_w"])]
        return f" ± {v.std(ddof=1) / np.sqrt(len(v)):.3f}" if len(v) > 1 else ""

    for r in rows + ["baseline"]:
        row = base if r == "baseline" else res[r]["row"]
        L.append(f"| {LABELS[r]} (`{r}`) | {fmt(row['mu_w'])}{sem(r)} | {fmt(row['mu_le_025'])} | "
                 f"{fmt(row['mu_le_05'])} | {fmt(row['mu'])} | {fmt(PAPER_VGG16.get(r))} | "
                 f"{fmt(PAPER_CAFFENET_VOC.get(r))} |")
    pairs = list(zip(rows[:-1], rows[1:]))
    for a, b in (("cmp_alpha2", "alpha2beta1"), ("cmp_alpha1", "alpha1beta0"),
                 ("cmp_alpha2_flat", "cmp_alpha2"), ("cmp_alpha1_flat", "cmp_alpha1")):
        if a in rules and b in rules and (a, b) not in pairs and (b, a) not in pairs:
            pairs.append((a, b))
    L += ["", "Paired differences of μ_w (same samples; mean ± standard error; samples where "
          "either is undefined left out):", ""]
    for a, b in pairs:
        d = res[a]["mu_w"] - res[b]["mu_w"]
        d = d[np.isfinite(d)]
        if len(d) > 1:
            se = d.std(ddof=1) / np.sqrt(len(d))
            L.append(f"* `{a}` − `{b}`: {d.mean():+.3f} ± {se:.3f}"
                     + ("" if abs(d.mean()) > 2 * se else " (within 2 s.e.: a tie)"))
    ours = {r: res[r]["row"]["mu_w"] for r in rules}
    tau1, k1 = _kendall(ours, PAPER_VGG16)
    tau2, k2 = _kendall(ours, PAPER_CAFFENET_VOC)
    und = {r: res[r]["n_undefined"] for r in rules if res[r]["n_undefined"]}
    L += ["", f"Rank agreement of μ_w with the paper (Kendall τ over the common methods): "
          f"VGG-16/ImageNet τ = {tau1:+.2f} ({len(k1)} methods), CaffeNet/VOC07 τ = "
          f"{tau2:+.2f} ({len(k2)} methods)."]
    if und:
        L.append(f"Samples without any positive relevance (μ undefined, skipped): {und}.")
    od = np.array([o["object_drop"] for o in occ])
    cd = np.array([o["context_drop"] for o in occ])
    oa = np.array([o["object_area"] for o in occ])
    L += ["", f"Occlusion (Fig. 2): mean logit drop {od.mean():.2f} when the object is "
          f"replaced by the training mean (mean occluded area {oa.mean():.1%}), "
          f"{cd.mean():.2f} when the context is (area {1 - oa.mean():.1%}); the object "
          f"drop is larger for {np.mean(od > cd):.0%} of the samples. Mean true-class logit "
          f"{np.mean([o['logit'] for o in occ]):.2f}."]
    L += ["", "Relevance time per method (lrpfast, CPU): " + ", ".join(
        f"`{r}` {res[r]['seconds']:.1f} s" for r in rules) + f" for {meta['n']} images."]
    return "\n".join(L) + "\n"


def _r4(a):
    return [None if not np.isfinite(v) else round(float(v), 4) for v in a]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundled", action="store_true",
                     help="generate the bundled task's held-out split (needs scikit-learn)")
    src.add_argument("--voc", help="a PASCAL-VOC-layout folder")
    ap.add_argument("--image-set", default="test", help="ImageSets/Main/<set>.txt (test)")
    ap.add_argument("--n", type=int, default=2000, help="--bundled: number of scenes (2000)")
    ap.add_argument("--limit", type=int, default=None, help="--voc: use the first N images")
    ap.add_argument("--model", default=None, help="model JSON (default: the bundled model.json)")
    ap.add_argument("--base-size", type=int, default=None,
                    help="resize the long side to this before cropping (default: input size)")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--tag", default=None, help="file name tag (default: bundled / voc)")
    ap.add_argument("--keep", default=None, help="--bundled: write the VOC folder here and keep it")
    ap.add_argument("--per-sample", action="store_true",
                    help="also store per-sample mu / mu_w / occlusion in the JSON")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "python"))
    import lrpfast
    from lrpfast import demo

    if args.model:
        mpath = Path(args.model)
        info = json.loads(mpath.read_text())
        mdir = mpath.parent
    else:
        info, mdir = demo.model_info(), demo.data_dir()
    net = lrpfast.Net(mdir / info["prototxt"], mdir / info["caffemodel"])
    top = info.get("top_layer")
    size = int(info["input"]["shape"][-1])
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    t0 = time.perf_counter()

    tmp = None
    if args.bundled:
        if args.keep:
            folder = Path(args.keep)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="lrpfast_heldout_")
            folder = Path(tmp.name)
        generate_bundled(folder, args.n)
        data_desc = (f"held-out split of the bundled task (scripts/train_bundled_model.py "
                     f"make_split('heldout', {args.n}): held-out digits, scene seed 3), read "
                     f"back from a VOC-layout folder")
        tag = args.tag or "bundled"
    else:
        folder = Path(args.voc)
        data_desc = f"{folder} ({args.image_set})"
        tag = args.tag or "voc"
    print(f"data: {data_desc}")
    rgb, labels, masks, ids, skipped = load_voc(folder, args.image_set, info["class_names"],
                                                size, args.base_size, args.limit)
    if skipped:
        print(f"skipped objects: {skipped}")
    x = demo.preprocess(rgb, info)
    logits = net.forward(x, blobs=[top])[top].reshape(len(x), -1) if top else net.forward(x)
    acc = float(np.mean(np.argmax(logits, axis=1) == labels))
    print(f"{len(labels)} samples loaded in {time.perf_counter() - t0:.1f} s; "
          f"accuracy {acc:.1%}")

    res = evaluate(net, x, labels, masks, rules, top, info)
    occ = occlusion(net, x, labels, masks, top)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    f3 = out / f"eval_{tag}_fig3_mu_by_box_size.png"
    f2 = out / f"eval_{tag}_fig2_occlusion.png"
    plot_fig3(res, rules, f3)
    plot_fig2(occ, f2)
    meta = {"data": data_desc, "n": len(labels), "accuracy": acc,
            "model": f"{info.get('name', '?')} ({info.get('architecture', '')})"}
    md = markdown(res, rules, occ, meta)
    md += f"\n![Fig. 3]({os.path.relpath(f3, out)})\n\n![Fig. 2]({os.path.relpath(f2, out)})\n"
    (out / f"eval_{tag}.md").write_text(md)
    js = {"meta": meta, "rules": {r: {"row": res[r]["row"], "seconds": res[r]["seconds"],
                                      "n_undefined": res[r]["n_undefined"]} for r in rules}}
    if args.per_sample:
        js.update({"ids": ids, "labels": labels.tolist(),
                   "box_fraction": _r4(next(iter(res.values()))["fraction"]),
                   "occlusion": [{k: round(v, 4) for k, v in o.items()} for o in occ]})
        for r in rules:
            js["rules"][r].update(mu=_r4(res[r]["mu"]), mu_w=_r4(res[r]["mu_w"]))
    (out / f"eval_{tag}.json").write_text(json.dumps(js, allow_nan=True) + "\n")
    print()
    print(md)
    print(f"wrote {out / f'eval_{tag}.md'}, {f3.name}, {f2.name}, eval_{tag}.json "
          f"({time.perf_counter() - t0:.0f} s in all)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
