"""Write the pictures of the worked examples (docs/_static/example_*.png).

    python docs/examples/make_pictures.py [MODELS_DIR]

MODELS_DIR holds res10_ssd_face/ (deploy.prototxt + res10_300x300_ssd_iter_140000.caffemodel,
OpenCV's face detector); default: $LRPFAST_MODELS. Without it only the first example is drawn.
The photo is scikit-image's ``astronaut`` (public domain, NASA).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import lrpfast
import numpy as np
from lrpfast import demo, render
from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "_static"


def cnn_example() -> None:
    """Example 1: an ImageNet-style CNN (the bundled digit CNN: conv/pool/fc, Caffe files)."""
    net, info = demo.load_bundled_model()
    samples = demo.load_bundled_images(info)[:3]
    cells, labels = [], []
    for s in samples:
        p = lrpfast.preprocess(s["rgb"], 64, mean=info["input"]["mean_bgr"])
        R = net.relevance(p.x, s["label"])[0]             # DEFAULT_RULES, true class
        big = lambda a: np.asarray(Image.fromarray(np.asarray(a)).resize((192, 192),  # noqa
                                                                        Image.NEAREST))
        cells += [big(p.image), big(render.heatmap(R)), big(render.relevance_overlay(p.image, R))]
        labels += [f"{s['name']}: {s['class_name']}", "heatmap (cmp_alpha2_flat)", "overlay"]
    render.save_png(OUT / "example_cnn.png", render.grid(cells, labels, ncols=3))


def _res10(models: Path):
    d = models / "res10_ssd_face"
    net = lrpfast.Net(d / "deploy.prototxt", d / "res10_300x300_ssd_iter_140000.caffemodel",
                      skip_unsupported=True)
    from skimage import data
    return net, data.astronaut()


def resnet_example(models: Path) -> None:
    """Example 2: a ResNet with BatchNorm (res10's ResNet-10 backbone) under several composites."""
    net, photo = _res10(models)
    p = lrpfast.preprocess(photo, 300, mode="resize", mean=(104, 177, 123))
    ssd = lrpfast.detection.SSD(net)
    best = ssd.detect(p.x[None])[0][0]
    cells, labels = [p.image], ["input (300 x 300)"]
    for name in ("cmp_alpha2_flat", "cmp_alpha1_flat", "epsilon"):
        R = net.relevance(p.x, best.conf_index, name, top=ssd.conf_blob)[0]
        cells.append(render.heatmap(R))
        labels.append(name)
    render.save_png(OUT / "example_resnet.png", render.grid(cells, labels, ncols=4))


def detector_example(models: Path) -> None:
    """Example 3: one SSD detection explained and drawn back onto the original photo."""
    net, photo = _res10(models)
    p = lrpfast.preprocess(photo, 300, mode="resize", mean=(104, 177, 123))
    ssd = lrpfast.detection.SSD(net)
    best = ssd.detect(p.x[None])[0][0]
    R = ssd.explain(p.x[None], best)
    ov = render.relevance_overlay(p.image, R)
    on_photo = p.to_photo(ov)                                    # back to 512 x 512
    im = Image.fromarray(on_photo)
    box = p.boxes_to_photo(best.box_pixels(300, 300)[None])[0]
    ImageDraw.Draw(im).rectangle([int(v) for v in box], outline=(0, 200, 0), width=3)
    small = np.asarray(im.resize((384, 384), Image.BILINEAR))
    img = render.with_colorbar(small, vmax=render.scale_of(R), label="relevance")
    render.save_png(OUT / "example_detector.png", render.grid(
        [img], [f"face, score {best.score:.4f}, prior {best.prior} (detection 0)"]))


if __name__ == "__main__":
    cnn_example()
    models = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("LRPFAST_MODELS", ""))
    if (models / "res10_ssd_face").is_dir():
        resnet_example(models)
        detector_example(models)
    else:
        print(f"no res10_ssd_face in {models!s}: examples 2 and 3 skipped")
