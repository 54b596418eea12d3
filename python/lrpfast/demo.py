"""The bundled demo: a small trained Caffe model explains a few bundled images.

``lrpfast demo [--out DIR]`` (or ``python -m lrpfast.demo``) loads the model shipped in
``lrpfast/data`` (a 10-class digit CNN for cluttered 64x64 scenes, trained by
``scripts/train_bundled_model.py``), explains its bundled images (each with a PASCAL VOC box
file) for the true class under several rules and composites, writes heatmap grids as PNG and
prints the localisation scores mu and mu_w of Kohlbrenner et al. (2020) per rule.

Helpers for other code (the evaluation bench, notebooks)::

    from lrpfast import demo
    net, info = demo.load_bundled_model()
    samples = demo.load_bundled_images()          # list of dicts: name, rgb, label, boxes, mask
    x = demo.preprocess(np.stack([s["rgb"] for s in samples]), info)   # (N, 3, 64, 64) BGR - mean
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import _files, metrics, render
from . import boxes as _boxes

__all__ = [
    "DEMO_RULES",
    "data_dir",
    "load_bundled_images",
    "load_bundled_model",
    "main",
    "model_info",
    "preprocess",
    "run",
]

#: Rules and composites the demo shows: the default (:data:`lrpfast.DEFAULT_RULES`) first, then a
#: uniform rule, two uniform alpha-beta rules and another LRP_CMP.
DEMO_RULES = ("cmp_alpha2_flat", "epsilon", "alpha1beta0", "alpha2beta1", "cmp_alpha1")


def data_dir() -> Path:
    """The folder of the bundled model and images (inside the installed package)."""
    return Path(__file__).resolve().parent / "data"


def model_info() -> dict:
    """The bundled model's description (``data/model.json``): class names, input layout and
    per-channel mean, architecture, documented held-out accuracy."""
    path = data_dir() / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"the bundled model is missing: {path} (a broken install?)")
    return json.loads(path.read_text())


def load_bundled_model(**net_kwargs):
    """``(lrpfast.Net, info)`` for the bundled model; ``net_kwargs`` go to ``lrpfast.Net``."""
    from .net import Net

    info = model_info()
    d = data_dir()
    return Net(d / info["prototxt"], d / info["caffemodel"], **net_kwargs), info


def preprocess(rgb, info: dict | None = None) -> np.ndarray:
    """uint8 RGB images ``(H, W, 3)`` or ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)``: BGR
    planes, 0..255 minus the bundled model's per-channel mean (its input layout)."""
    info = info or model_info()
    a = np.asarray(rgb)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected RGB images (N, H, W, 3) or (H, W, 3), got shape {a.shape}")
    x = a[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
    mean = np.asarray(info["input"]["mean_bgr"], np.float32)
    return np.ascontiguousarray(x - mean[None, :, None, None])


def load_bundled_images(info: dict | None = None) -> list:
    """The bundled demo images with their boxes, sorted by name.

    Returns a list of dicts: ``name``, ``rgb`` (uint8 (H, W, 3)), ``label`` (class index),
    ``class_name``, ``boxes`` ((K, 4) int64, 0-based inclusive), ``mask`` ((H, W) bool union).
    """
    from PIL import Image

    info = info or model_info()
    names = info["class_names"]
    folder = data_dir() / info.get("images", "images")
    out = []
    for png in sorted(folder.glob("*.png")):
        xml = png.with_suffix(".xml")
        if not xml.is_file():
            continue
        ann = _boxes.read_voc(xml)
        objs = [o for o in ann["objects"] if o["name"] in names]
        if not objs:
            continue
        cname = objs[0]["name"]
        with Image.open(png) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        b = _boxes.boxes_for_class(ann, cname)
        out.append({"name": png.stem, "rgb": rgb, "label": names.index(cname),
                    "class_name": cname, "boxes": b, "mask": metrics.box_mask(b, rgb.shape[:2])})
    if not out:
        raise FileNotFoundError(f"no bundled images with VOC boxes in {folder}")
    return out


def _upscale(img: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1) if k > 1 else img


def _draw_boxes(img: np.ndarray, bxs, k: int, colour=(255, 0, 0)) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.ascontiguousarray(img))
    d = ImageDraw.Draw(im)
    for x0, y0, x1, y1 in np.asarray(bxs).reshape(-1, 4):
        d.rectangle([int(x0) * k, int(y0) * k, (int(x1) + 1) * k - 1, (int(y1) + 1) * k - 1],
                    outline=colour, width=max(1, k // 2))
    return np.asarray(im)


def run(out_dir="lrpfast_demo", rules=DEMO_RULES, scale: int = 3, cmap: str = render.DEFAULT_CMAP,
        verbose: bool = True, stream=None) -> dict:
    """Explain the bundled images under ``rules``; write PNGs to ``out_dir``; print scores.

    Writes ``<image>.png`` (the input with its box, then one heatmap per rule; red = positive
    relevance, blue = negative, each map scaled by its own max |R|) for each image and
    ``overview.png`` (all images, one row each). Returns ``{"files": [...], "scores": {rule:
    {"mu": mean, "mu_w": mean, "per_image": [(mu, mu_w), ...]}}, "predictions": [...],
    "labels": [...], "seconds": float}``.
    """
    stream = stream or sys.stdout

    def say(*a):
        if verbose:
            print(*a, file=stream)

    t0 = time.perf_counter()
    net, info = load_bundled_model()
    samples = load_bundled_images(info)
    x = preprocess(np.stack([s["rgb"] for s in samples]), info)
    labels = [s["label"] for s in samples]
    masks = np.stack([s["mask"] for s in samples])
    top = info.get("top_layer", "fc6")
    logits = net.forward(x, blobs=[top], keep=False)[top].reshape(len(samples), -1)
    preds = [int(k) for k in np.argmax(logits, axis=1)]
    names = info["class_names"]

    rules = list(rules)
    scores, maps = {}, {}
    for rule in rules:
        R = net.relevance(x, labels, rules=rule)          # true class of each image
        h = R.sum(axis=1)
        ev = metrics.evaluate(h, masks)
        maps[rule] = h
        scores[rule] = {"mu": float(np.nanmean(ev["mu"])) if np.any(~np.isnan(ev["mu"]))
                        else float("nan"),
                        "mu_w": float(np.nanmean(ev["mu_w"])) if np.any(~np.isnan(ev["mu_w"]))
                        else float("nan"),
                        "per_image": list(zip(ev["mu"].tolist(), ev["mu_w"].tolist()))}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, overview, ov_labels = [], [], []
    for i, s in enumerate(samples):
        cells = [_draw_boxes(_upscale(s["rgb"], scale), s["boxes"], scale)]
        cl = [f"{s['name']}: {s['class_name']}"
              + ("" if preds[i] == s["label"] else f" (pred {names[preds[i]]})")]
        for rule in rules:
            hm = render.heatmap(maps[rule][i], cmap=cmap, norm="symmetric")
            cells.append(_draw_boxes(_upscale(hm, scale), s["boxes"], scale, (0, 160, 0)))
            m, mw = scores[rule]["per_image"][i]
            # the rule on its own line: Pillow's default font sets spaces narrow, and
            # "rule mu=.. mu_w=.." on one line read as one word
            cl.append(f"{rule}\n" + (f"mu={m:.2f}   mu_w={mw:.2f}" if np.isfinite(m) else
                                     "mu=n/a (no positive relevance)"))
        g = render.grid(cells, cl, ncols=len(cells))
        f = out / f"{s['name']}.png"
        _files.save_png(f, g)
        files.append(str(f))
        overview += cells
        ov_labels += cl
    f = out / "overview.png"
    _files.save_png(f, render.grid(overview, ov_labels, ncols=len(rules) + 1))
    files.append(str(f))
    seconds = time.perf_counter() - t0

    acc = info.get("accuracy", {}).get("heldout")
    say(f"lrpfast demo: model '{net.name}' ({info.get('architecture', '')})")
    if acc is not None:
        say(f"  held-out accuracy {acc:.1%} (documented in model.json); here "
            f"{sum(p == l for p, l in zip(preds, labels))}/{len(labels)} images correct")
    say(f"  explained {len(samples)} images for their true class under {len(rules)} rules")
    say(f"  {'rule':<18} {'mean mu':>8} {'mean mu_w':>10}   (uniform map: mu_w = 1)")
    for rule in rules:
        n_nan = sum(not np.isfinite(m) for m, _ in scores[rule]["per_image"])
        say(f"  {rule:<18} {scores[rule]['mu']:>8.3f} {scores[rule]['mu_w']:>10.3f}")
        if n_nan:
            say(f"    ({rule}: mean of {len(samples) - n_nan}/{len(samples)} images; {n_nan} "
                f"map(s) without positive relevance, where mu and mu_w are undefined)")
    colours = {"bwr": "red = positive relevance, blue = negative",
               "toolbox": "yellow = positive relevance, blue = negative"}.get(
        cmap, f"colour map {cmap}, zero relevance in the middle")
    say(f"  wrote {len(files)} PNG files to {out.resolve()}  (overview: {f.name}; "
        f"{colours}; box = ground truth)")
    say(f"  done in {seconds:.2f} s")
    return {"files": files, "scores": scores, "predictions": preds, "labels": labels,
            "seconds": seconds}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's command-line options (shared by ``lrpfast demo`` and ``python -m``)."""
    p.add_argument("--out", default="lrpfast_demo",
                   help="folder for the PNG files (default: ./lrpfast_demo)")
    p.add_argument("--rules", default=",".join(DEMO_RULES),
                   help=f"comma-separated rules / composites (default: {','.join(DEMO_RULES)})")
    p.add_argument("--scale", type=int, default=3, help="pixel upscaling of the images (3)")
    p.add_argument("--cmap", default=render.DEFAULT_CMAP, choices=sorted(render.COLORMAPS),
                   help=f"colour map of the heatmaps ({render.DEFAULT_CMAP})")


def run_from_args(args) -> int:
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    if not rules:
        raise ValueError("--rules: give at least one rule or composite")
    if args.scale < 1:
        raise ValueError("--scale must be >= 1")
    run(args.out, rules, scale=args.scale, cmap=args.cmap)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lrpfast.demo", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
