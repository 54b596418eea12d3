"""A/B of two lrpfast builds (e.g. before / after a change), in alternating processes.

    python bench/bench_ab.py --before /path/to/venv-before/bin/python [--after python]
                             [--rounds 3] [--runs 3] [--batch 8] [--threads 2] [--nets caffenet,vgg16]

Each round runs one process per build; a process times the forward pass and relevance under
uniform eps, cmp_alpha2_flat and alpha1beta0 on the CaffeNet- and VGG-16-shaped nets of
bench_speed.py (generated weights, the same files for both builds), best of --runs after one
warm-up. Alternating the builds' processes spreads a slower spell of a shared machine over both.
Prints a markdown table of the best time per build over all rounds and the ratio after / before.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r'''
import json, sys, time
import numpy as np
sys.path.insert(0, {here!r})
import lrpfast
from bench_speed import build_model
lrpfast.set_num_threads({threads})
res = {{}}
for kind in {nets!r}:
    proto, w = build_model(kind, {out!r})
    net = lrpfast.Net(proto, w)
    x = np.random.default_rng(0).standard_normal(({batch},) + net.inputs["data"], np.float32)
    for label, rules in [("forward", None), ("eps", "epsilon"),
                         ("cmp_alpha2_flat", "cmp_alpha2_flat"), ("alpha1beta0", "alpha1beta0")]:
        f = (lambda: net.forward(x)) if rules is None else (lambda r=rules: net.relevance(x, -1, rules=r))
        f()
        best = 1e9
        for _ in range({runs}):
            t = time.perf_counter(); f(); best = min(best, time.perf_counter() - t)
        res[kind + " " + label] = best
print(json.dumps(res))
'''


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="python of the 'before' build")
    ap.add_argument("--after", default=sys.executable, help="python of the 'after' build")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nets", default="caffenet,vgg16")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args(argv)
    code = CHILD.format(here=HERE, threads=args.threads, nets=args.nets.split(","),
                        out=args.out, batch=args.batch, runs=args.runs)
    pys = {"before": args.before, "after": args.after}
    best: dict = {k: {} for k in pys}
    for _ in range(args.rounds):
        for k, py in pys.items():   # run outside the checkout: each imports its own build
            out = subprocess.run([py, "-c", code], capture_output=True, text=True, check=True,
                                 cwd=os.path.expanduser("~"))
            for key, v in json.loads(out.stdout.strip().splitlines()[-1]).items():
                best[k][key] = min(best[k].get(key, 1e9), v)
    print(f"| pass (batch {args.batch}, {args.threads} threads) | before s | after s | "
          "after / before |")
    print("|---|---|---|---|")
    for key, t0 in best["before"].items():
        t1 = best["after"][key]
        print(f"| {key} | {t0:.3f} | {t1:.3f} | {t1 / t0:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
