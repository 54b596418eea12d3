"""Benchmark: the CPU one photo costs beside the engine, step by step, on one thread.

    python bench/bench_preprocess.py [--photo-size 1500x1000] [--images 96] [--repeats 3]

Photos: bench_pipeline.py's JPEG photos (made once into ``bench/out/photos*/``). Reported, per
photo, the best of ``--repeats`` passes over ``--images`` photos, in CPU time of this process:

* resize: Pillow's ``Image.resize`` of the whole decoded photo to the Caffe preset's size
  (short side 256), against lrpfast's ``resize_bilinear`` of the centre 227x227 window only
  (native SIMD path and portable C++); both give the same bytes (checked here);
* decode + pre-process: ``pipeline.decode`` (Pillow's JPEG decoding, the resize, float32
  planes minus the mean), exact and fast (``Preprocessing(draft=True)``);
* store write: ``Store.write_chunk`` of CaffeNet-sized float16 maps (cmp_alpha2_flat, batch 16).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_pipeline import make_photos  # noqa: E402
from bench_speed import build_model  # noqa: E402


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def best_ms(f, items, repeats: int) -> float:
    f(items[0])
    best = float("inf")
    for _ in range(repeats):
        t = cpu()
        for it in items:
            f(it)
        best = min(best, (cpu() - t) / len(items) * 1e3)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photo-size", default="1500x1000")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args()
    from PIL import Image

    import lrpfast
    from lrpfast import _core
    from lrpfast import pipeline as P
    from lrpfast.preprocess import _pixels, resize_bilinear

    lrpfast.set_num_threads(1)
    pw, ph = (int(v) for v in args.photo_size.split("x"))
    suffix = "" if (pw, ph) == (1500, 1000) else f"_{pw}x{ph}"
    photos = make_photos(os.path.join(args.out, "photos" + suffix), args.images, (pw, ph))
    proto, weights = build_model("caffenet", args.out)
    rows = []

    # resize alone, on decoded photos
    decoded = []
    for p in photos[:16]:
        with Image.open(p) as im:
            im.load()
            decoded.append(im.convert("RGB"))
    w, h = decoded[0].size
    f = 256 / min(w, h)
    rw, rh = int(np.floor(w * f + 0.5)), int(np.floor(h * f + 0.5))
    win = ((rh - 227) // 2, (rw - 227) // 2, 227, 227)
    y0, x0 = win[:2]

    def pillow(im):
        return np.asarray(im.resize((rw, rh), Image.BILINEAR))[y0:y0 + 227, x0:x0 + 227]

    def native(im):
        return resize_bilinear(_pixels(im), (rh, rw), win)

    for im in decoded[:4]:
        assert np.array_equal(pillow(im), native(im)), "native resize differs from Pillow's"
    rows.append((f"resize {w}x{h} -> {rw}x{rh}, Pillow (whole)", best_ms(pillow, decoded,
                                                                          args.repeats)))
    before = _core.get_simd()
    for path in ("native", "generic"):
        _core.set_simd(path)
        rows.append((f"resize, lrpfast (centre 227x227, {_core.simd_kernels()})",
                     best_ms(native, decoded, args.repeats)))
    _core.set_simd(before)

    # decode + pre-process
    for draft in (False, True):
        plan = P.make_plan(proto, photos, weights=weights, rules="cmp_alpha2_flat",
                           classes=[-1], batch=16, dtype="float16",
                           preprocessing=P.Preprocessing.caffe(size=256, draft=draft))
        rows.append((f"decode + pre-process, {'fast' if draft else 'exact'}",
                     best_ms(lambda it: P.decode(plan, it, (3, 227, 227)), plan.items,
                             args.repeats)))

    # the store write
    d = tempfile.mkdtemp()
    try:
        net = lrpfast.Net(proto, weights)
        plan = P.make_plan(proto, photos[:64], weights=weights, rules="cmp_alpha2_flat",
                           classes=[-1], batch=16, out=os.path.join(d, "s.zarr"),
                           dtype="float16", preprocessing=P.Preprocessing.caffe(size=256))
        engine = P.Engine(net, plan.rules, plan.classes, plan.top)
        store = P.Store.open(plan, engine.input_shape, False)
        dec = [P.decode(plan, it, engine.input_shape) for it in plan.items]
        chunks = [P.compute_chunk(engine, i, dec[16 * i:16 * i + 16])
                  for i in range((len(dec) + 15) // 16)]
        rels = [P.chunk_relevance(plan, engine, r) for r in chunks]
        tables = [P.chunk_rows(plan, engine, r) for r in chunks]

        def write(k):
            store.write_chunk(plan, chunks[k].index, rels[k], tables[k])

        rows.append(("store write per image (zstd, float16)",
                     best_ms(write, list(range(len(chunks))), args.repeats) * len(chunks)
                     / len(dec)))
    finally:
        shutil.rmtree(d, ignore_errors=True)

    print(f"lrpfast {lrpfast.__version__}, {pw}x{ph} photos, one thread, CPU ms per photo "
          f"(best of {args.repeats} passes over {len(photos)} photos)")
    print("| step | ms |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
