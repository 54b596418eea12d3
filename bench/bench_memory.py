"""Peak memory (RSS) of one pass per composite, each in a fresh process.

    python bench/bench_memory.py [--nets caffenet,vgg16] [--batch 8] [--threads 2]

For the CaffeNet- and VGG-16-shaped nets of bench_speed.py (He weights), a fresh Python
process per (net, pass) loads the net, runs the pass once to warm up, resets the peak
(/proc/self/clear_refs), runs it again and reports:

* "loaded": RSS with the net loaded (weights, numpy, lrpfast), before any pass;
* "peak": the peak RSS (VmHWM) of the second pass;
* "after": RSS once the call returned (what the process keeps: freed blocks held for reuse,
  the net's derived weights, the last forward for the toolbox API);
* "released": RSS after ``net.release()`` (which also calls ``lrpfast.release_memory()``).

The ratio column is peak / the epsilon pass's peak (target for all-alpha-beta: <= 1.5).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

PASSES = ["forward", "epsilon", "alpha1beta0", "alpha2beta1", "cmp_alpha2_flat",
          "cmp_alpha1_flat"]

CHILD = r'''
import json, sys
import numpy as np
sys.path.insert(0, {here!r})
import lrpfast
from bench_speed import build_model, reset_peak
from bench_load import peak_rss

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

lrpfast.set_num_threads({threads})
proto, w = build_model({net!r}, {out!r})
net = lrpfast.Net(proto, w)
x = np.random.default_rng(0).standard_normal(({batch},) + net.inputs["data"], np.float32)
p = {pass_!r}
f = (lambda: net.forward(x)) if p == "forward" else (lambda: net.relevance(x, -1, rules=p))
loaded = rss()
f()
reset_peak()
f()
out = dict(loaded=loaded, peak=peak_rss(), after=rss())
net.release()
out["released"] = rss()
print(json.dumps(out))
'''


def run(net, pass_, args):
    code = CHILD.format(here=HERE, threads=args.threads, net=net, out=args.out, batch=args.batch,
                        pass_=pass_)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="caffenet,vgg16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", default=",".join(PASSES))
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args(argv)
    sys.path.insert(0, HERE)
    from bench_speed import build_model
    mb = 1 << 20
    print(f"batch {args.batch}, {args.threads} threads, one fresh process per row; MB = 2^20 "
          f"bytes")
    print()
    print("| net | pass | loaded MB | peak MB | peak / eps peak | after call MB | "
          "after release() MB |")
    print("|---|---|---|---|---|---|---|")
    for net in args.nets.split(","):
        build_model(net, args.out)   # written once, outside the measured processes
        eps_peak = None
        passes = args.passes.split(",")
        if "epsilon" in passes:   # the reference row first
            passes.remove("epsilon")
            passes.insert(0, "epsilon")
        for p in passes:
            r = run(net, p, args)
            if p == "epsilon":
                eps_peak = r["peak"]
            ratio = f"{r['peak'] / eps_peak:.2f}" if eps_peak else "-"
            print(f"| {net} b{args.batch} | {p} | {r['loaded'] / mb:.0f} | {r['peak'] / mb:.0f} | "
                  f"{ratio} | {r['after'] / mb:.0f} | {r['released'] / mb:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
