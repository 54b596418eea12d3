"""Caffe mode (the LRP Toolbox's API and numbers) against lrpfast mode, per formula code.

    python bench/bench_compat.py [--batches 1,8] [--threads 1,2] [--repeats 3] [--codes 0,2,...]

On the CaffeNet-shaped net of bench_speed.py (He weights, small random biases, so the grouped
convolutions' biases differ between groups and caffe mode's ``grouped_bias_bug`` changes the
numbers), for every toolbox formula code:

* "compat": ``net.forward(x)`` + ``net.backward_relevance_multi(classes, RelPropOpts(code))`` in
  caffe mode (the toolbox's workflow: one forward, then the relevance on its activations);
* "fast": ``net.relevance(x, classes, rules=RelPropOpts(code, mode="lrpfast"))``: the same code
  with lrpfast's rules, the closest lrpfast-mode composite, forward included;
* "caffe one call": ``net.relevance(x, classes, rules=RelPropOpts(code))`` (caffe mode in one
  call; it also runs the relevance blow-up diagnostic, which LRN's non-conservative first-order
  rule sets off on this net, and which ``backward_relevance`` leaves out).

The three alternate their repeats (a, b, c, a, b, c, ...) and each keeps its best, so a slow
spell of the shared machine falls on all of them. Ratio = compat / fast (target <= 1.2). The
last column compares the compat result with the one-call result: the same bits (the stored
forward pass gives the same numbers as a fresh one), except where the grouped-bias bug shifts a
z+ that the one call got from the forward pass (float32 rounding).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_speed import build_model, timed_alternating  # noqa: E402

#: formula code -> aux (Caffe index of the last layer that gets the first rule; CaffeNet's
#: conv1 is 0, conv2 4, conv3 8)
CODES = {0: -1, 2: -1, 54: 0, 56: 0, 58: 0, 60: 0, 100: -1, 102: 0, 104: 0, 114: 8,
         26: -1, 166: -1, 11: -1, 99: -1}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--codes", default=",".join(str(c) for c in CODES))
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args(argv)

    import lrpfast
    from lrpfast import RelPropOpts
    from lrpfast.diagnostics import ConservationWarning

    # LRN's first-order rule (caffe mode) is not conservative; the bench times, it does not judge
    warnings.simplefilter("ignore", ConservationWarning)

    proto, weights = build_model("caffenet", args.out)
    net = lrpfast.Net(proto, weights)
    codes = [int(c) for c in args.codes.split(",")]
    print(f"lrpfast {lrpfast.__version__} (simd {lrpfast._core.simd_kernels()}, "
          f"{lrpfast.info()['blas']}), CaffeNet 227x227 (He weights, random biases), "
          f"best of {args.repeats}, compat / fast / caffe-fast alternated")
    print()
    print("| batch | threads | code | forward s | compat (caffe) s | fast (lrpfast mode) s | "
          "compat / fast | caffe one call s | compat vs one call |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for batch in (int(b) for b in args.batches.split(",")):
        rng = np.random.default_rng(batch)
        x = rng.standard_normal((batch,) + net.inputs["data"], np.float32) * 50
        classes = [[int(c)] for c in rng.integers(0, 1000, batch)]
        for threads in (int(t) for t in args.threads.split(",")):
            lrpfast.set_num_threads(threads)
            fwd = timed_alternating([lambda: net.forward(x)], args.repeats)[0][0]
            for code in codes:
                aux = CODES[code]
                caffe = RelPropOpts(relpropformulatype=code, epsstab=0.1, alphabeta_beta=1.0,
                                    auxiliaryvariable_maxlayerindexforflatdistinconv=aux)
                fast = RelPropOpts(relpropformulatype=code, epsstab=0.1, alphabeta_beta=1.0,
                                   auxiliaryvariable_maxlayerindexforflatdistinconv=aux,
                                   mode="lrpfast")

                def compat():
                    net.forward(x)
                    return net.backward_relevance_multi(classes, caffe).R
                (tc, rc, _), (tf, _, _), (to, ro, _) = timed_alternating(
                    [compat, lambda: net.relevance(x, classes, rules=fast),
                     lambda: net.relevance(x, classes, rules=caffe)], args.repeats)
                # bit-equal, or (grouped-bias bug: z+ shifted vs computed) the max rel difference
                same = "same bits" if np.array_equal(rc, ro) else \
                    f"{np.abs(rc - ro).max() / max(np.abs(ro).max(), 1e-30):.1e}"
                worst = max(worst, tc / tf)
                print(f"| {batch} | {threads} | {code} | {fwd:.3f} | {tc:.3f} | {tf:.3f} | "
                      f"{tc / tf:.2f} | {to:.3f} | {same} |", flush=True)
    print(f"\nworst compat / fast: {worst:.2f} (target <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
