"""Benchmark: loading a VGG-16-sized caffemodel with lrpfast.caffe.read_caffemodel.

Targets: load time <= 2x the time to read the file's bytes, and peak memory
increase < 2x the file size. Writes bench/out/vgg16_random.{prototxt,caffemodel} once
(random float32 weights, VGG-16 layer shapes, ~550 MB) and reuses them.

    python bench/bench_load.py [--repeats 3] [--out bench/out]

Prints a markdown table. Timings are best of N with the file in the page cache (the file
was just written or read), so (a) measures memory bandwidth + syscalls, the tightest bound;
"read" in the ratios is the faster of (a) and (a').
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

# (name, in_channels, out_channels) of the 13 3x3 convolutions; a 2x2 max pool after each block.
VGG16_CONVS = [
    ("conv1_1", 3, 64), ("conv1_2", 64, 64),
    ("conv2_1", 64, 128), ("conv2_2", 128, 128),
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512),
]
VGG16_FCS = [("fc6", 25088, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000)]


def vgg16_prototxt() -> str:
    """The VGG-16 deploy prototxt (layer names as in the Caffe model zoo)."""
    parts = ['name: "VGG_ILSVRC_16_layers"',
             'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 224 dim: 224 }']
    bottom = "data"
    for name, _, cout in VGG16_CONVS:
        parts.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" '
                     f'top: "{name}" convolution_param {{ num_output: {cout} pad: 1 '
                     f'kernel_size: 3 }} }}')
        parts.append(f'layer {{ name: "relu{name[4:]}" type: "ReLU" bottom: "{name}" '
                     f'top: "{name}" }}')
        bottom = name
        if name.endswith(("1_2", "2_2", "3_3", "4_3", "5_3")):
            pool = "pool" + name[4]
            parts.append(f'layer {{ name: "{pool}" type: "Pooling" bottom: "{bottom}" '
                         f'top: "{pool}" pooling_param {{ pool: MAX kernel_size: 2 '
                         f'stride: 2 }} }}')
            bottom = pool
    for name, _, cout in VGG16_FCS:
        parts.append(f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" '
                     f'top: "{name}" inner_product_param {{ num_output: {cout} }} }}')
        bottom = name
        if name != "fc8":
            parts.append(f'layer {{ name: "relu{name[2:]}" type: "ReLU" bottom: "{name}" '
                         f'top: "{name}" }}')
            parts.append(f'layer {{ name: "drop{name[2:]}" type: "Dropout" bottom: "{name}" '
                         f'top: "{name}" dropout_param {{ dropout_ratio: 0.5 }} }}')
    parts.append(f'layer {{ name: "prob" type: "Softmax" bottom: "{bottom}" top: "prob" }}')
    return "\n".join(parts) + "\n"


def vgg16_weights(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    weights = {}
    for name, cin, cout in VGG16_CONVS:
        weights[name] = [rng.standard_normal((cout, cin, 3, 3), np.float32) * 0.01,
                         rng.standard_normal(cout, np.float32)]
    for name, cin, cout in VGG16_FCS:
        weights[name] = [rng.standard_normal((cout, cin), np.float32) * 0.01,
                         rng.standard_normal(cout, np.float32)]
    return weights


def ensure_model(out_dir: str) -> str:
    from lrpfast.caffe import write_model

    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, "vgg16_random")
    expected = 4 * sum(co * ci * 9 + co for _, ci, co in VGG16_CONVS) \
        + 4 * sum(co * ci + co for _, ci, co in VGG16_FCS)
    path = prefix + ".caffemodel"
    if not (os.path.exists(path) and expected < os.path.getsize(path) < expected + 1 << 16):
        t = time.perf_counter()
        write_model(prefix, vgg16_prototxt(), vgg16_weights())
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
    return path


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def read_bytearray(path: str) -> None:
    """The brief's baseline: the whole file into a bytearray (zero-filled, then read)."""
    buf = bytearray(os.path.getsize(path))
    with open(path, "rb", buffering=0) as f:
        f.readinto(buf)


def read_bytes(path: str) -> None:
    """A faster baseline: ``f.read()`` into one bytes object (no zero fill)."""
    with open(path, "rb") as f:
        f.read()


def peak_rss() -> int:
    """This process's peak resident set size in bytes (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_PEAK_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[2])
from bench_load import peak_rss
from lrpfast.caffe import read_caffemodel
before = peak_rss()
w = read_caffemodel(sys.argv[1])
print(before, peak_rss(), sum(a.nbytes for blobs in w.values() for a in blobs))
"""


def peak_increase(path: str) -> tuple[int, int]:
    """(peak RSS increase, bytes of weights returned), measured in a fresh interpreter."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, path, here], check=True,
                         capture_output=True, text=True).stdout.split()
    before, after, nbytes = map(int, out)
    return after - before, nbytes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    args = ap.parse_args(argv)

    from lrpfast.caffe import read_caffemodel

    path = ensure_model(args.out)
    size = os.path.getsize(path)
    t_array = best_of(lambda: read_bytearray(path), args.repeats)
    t_bytes = best_of(lambda: read_bytes(path), args.repeats)
    t_load = best_of(lambda: read_caffemodel(path), args.repeats)
    peak, nbytes = peak_increase(path)

    t_read = min(t_array, t_bytes)  # judge against the faster baseline
    time_ok, mem_ok = t_load <= 2 * t_read, peak < 2 * size
    print(f"VGG-16 caffemodel: {size / 1e6:.1f} MB, weights returned {nbytes / 1e6:.1f} MB\n")
    print("| measure | value | ratio | target | ok |")
    print("|---|---|---|---|---|")
    print(f"| (a) read file into a bytearray (best of {args.repeats}) | {t_array * 1e3:.0f} ms "
          f"| {t_array / t_read:.2f}x read | | |")
    print(f"| (a') read file with f.read() (best of {args.repeats}) | {t_bytes * 1e3:.0f} ms "
          f"| {t_bytes / t_read:.2f}x read | | |")
    print(f"| (b) read_caffemodel (best of {args.repeats}) | {t_load * 1e3:.0f} ms "
          f"| {t_load / t_read:.2f}x read | <= 2x read | {'yes' if time_ok else 'NO'} |")
    print(f"| (c) peak RSS increase in read_caffemodel | {peak / 1e6:.0f} MB "
          f"| {peak / size:.2f}x file | < 2x file | {'yes' if mem_ok else 'NO'} |")
    return 0 if time_ok and mem_ok else 1


if __name__ == "__main__":
    sys.exit(main())
