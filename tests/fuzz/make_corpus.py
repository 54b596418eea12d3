"""Write the fuzz harness's seed corpus (tests/fuzz/corpus/{prototxt,caffemodel,binaryproto}):
small valid files in each encoding the readers handle (V2 and V1 layers, packed and unpacked
floats, doubles, legacy num/channels/height/width shapes) and a few near-misses.

    python tests/fuzz/make_corpus.py
"""
from __future__ import annotations

import os
import shutil
import sys

import numpy as np
from lrpfast import caffe

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fuzz_readers import NET


def main() -> None:
    out = os.path.join(HERE, "corpus")
    shutil.rmtree(out, ignore_errors=True)
    for t in ("prototxt", "caffemodel", "binaryproto"):
        os.makedirs(os.path.join(out, t))
    rng = np.random.default_rng(14)
    pt = os.path.join(out, "prototxt")
    with open(os.path.join(pt, "net.prototxt"), "w") as f:
        f.write(NET)
    data = os.path.join(HERE, "..", "..", "python", "lrpfast", "data", "digits_cnn.prototxt")
    shutil.copy(data, os.path.join(pt, "digits.prototxt"))
    with open(os.path.join(pt, "v1.prototxt"), "w") as f:
        f.write('input: "x"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 5\ninput_dim: 5\n'
                'layers { name: "c" type: CONVOLUTION bottom: "x" top: "c"\n'
                '  convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }\n'
                'layers { name: "p" type: POOLING bottom: "c" top: "p"\n'
                '  pooling_param { pool: AVE kernel_size: 2 stride: 2 } }\n'
                'layers { name: "n" type: LRN bottom: "p" top: "n" }\n')
    with open(os.path.join(pt, "layer_input.prototxt"), "w") as f:
        f.write('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 } } }\n'
                'layer { name: "a" type: "Eltwise" bottom: "x" bottom: "x" top: "a"\n'
                '  eltwise_param { operation: SUM coeff: 1 coeff: -1 } }\n'
                'layer { name: "s" type: "Softmax" bottom: "a" top: "s" }\n')
    w = {"conv": [rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)],
         "bn": [rng.random(3), rng.random(3) + 0.5, np.ones(1)],
         "sc": [rng.random(3) + 0.5, rng.standard_normal(3)],
         "ip": [rng.standard_normal((4, 48)) * 0.1, rng.standard_normal(4)]}
    cm = os.path.join(out, "caffemodel")
    proto = caffe.parse_prototxt(NET)
    caffe.write_caffemodel(os.path.join(cm, "float.caffemodel"), w, proto)
    caffe.write_caffemodel(os.path.join(cm, "double.caffemodel"), w, proto, double=True)
    caffe.write_caffemodel(os.path.join(cm, "legacy.caffemodel"), w, proto, legacy_shape=True)
    caffe.write_caffemodel(os.path.join(cm, "v1.caffemodel"), {"conv": w["conv"], "ip": w["ip"]},
                           proto, v1=True)
    caffe.write_caffemodel(os.path.join(cm, "empty_layers.caffemodel"), {"relu": [], "x": []})
    bp = os.path.join(out, "binaryproto")
    m = rng.random((1, 3, 4, 4)).astype(np.float32) * 255
    caffe.write_binaryproto(os.path.join(bp, "mean.binaryproto"), m)
    caffe.write_binaryproto(os.path.join(bp, "legacy.binaryproto"), m, legacy_shape=True)
    caffe.write_binaryproto(os.path.join(bp, "double.binaryproto"), m[0, :, :2], double=True)
    caffe.write_binaryproto(os.path.join(bp, "vector.binaryproto"), np.arange(5.0))


if __name__ == "__main__":
    main()
