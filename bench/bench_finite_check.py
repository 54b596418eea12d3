"""Cost of the non-finite check (Net(check_finite=True), the default) on a relevance pass.

    python bench/bench_finite_check.py [--threads 2] [--repeats 7]

For CaffeNet 227x227 (batch 8) and the bundled digits CNN 64x64 (batch 64): the same nets,
inputs and classes with check_finite on and off in one process, their repeats alternated, the
best time of each; reports the ratio on/off for ``relevance`` (epsilon and cmp_alpha2_flat)
and ``forward``, plus the check's own work timed alone (one ``_all_finite`` over every blob
of the net, an upper bound of what a pass checks) as a share of the pass: on a shared machine
the on/off ratio of whole passes moves by more than the check costs. The forward pass checks
only its final outputs (every layer's output only when those are not finite); the relevance
pass checks each layer's relevance once (a float32 sum).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_speed import build_model, timed_alternating, timed_pair


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args(argv)
    import lrpfast
    from lrpfast.net import _all_finite

    lrpfast.set_num_threads(args.threads)
    data = os.path.join(os.path.dirname(lrpfast.__file__), "data")
    cases = [("CaffeNet b8", *build_model("caffenet", args.out), 8),
             ("digits CNN b64", os.path.join(data, "digits_cnn.prototxt"),
              os.path.join(data, "digits_cnn.caffemodel"), 64)]
    print(f"lrpfast {lrpfast.__version__}, {args.threads} threads, best of {args.repeats}")
    print("| net | pass | check on s | check off s | on / off | check alone (all blobs) / "
          "pass off |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(14)
    for label, proto, weights, batch in cases:
        on = lrpfast.Net(proto, weights)
        off = lrpfast.Net(proto, weights, check_finite=False)
        shape = next(iter(on.inputs.values()))
        x = (rng.standard_normal((batch,) + shape) * 50).astype(np.float32)
        passes = [("forward", lambda n, x=x: n.forward(x))]
        for rules in ("epsilon", "cmp_alpha2_flat"):
            passes.append((f"relevance {rules}",
                           lambda n, r=rules, x=x: n.relevance(x, -1, rules=r)))
        # the check's own work, timed alone: one _all_finite per blob of the net (the relevance
        # arrays a pass checks have the shapes of the blobs it passes through: at most this)
        blobs = list(off.forward(x, blobs=list(off.shapes)).values())
        (t_check, _, _), = timed_alternating(
            [lambda b=blobs: [_all_finite(v) for v in b]], args.repeats)
        for name, fn in passes:
            (t_on, r_on, _), (t_off, r_off, _) = timed_pair(
                lambda fn=fn, n=on: fn(n), lambda fn=fn, n=off: fn(n), args.repeats)
            assert np.array_equal(r_on, r_off)
            alone = (f"{1e3 * t_check:.2f} ms = {100 * t_check / t_off:.1f}%"
                     if name != "forward" else "final outputs only")
            print(f"| {label} | {name} | {t_on:.4f} | {t_off:.4f} | {t_on / t_off:.3f} | "
                  f"{alone} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
