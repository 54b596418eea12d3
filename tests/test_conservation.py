"""Engine-level properties: conservation of the total relevance through conv+relu+pool+IP
stacks, batch independence, and idempotence (lrpfast mode's rules; no stored activation is changed by a pass)."""
from __future__ import annotations

import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import nets
import reference as ref

lrpfast = pytest.importorskip("lrpfast")
R = pytest.importorskip("lrpfast.rules")
if not hasattr(lrpfast, "Net"):
    pytest.skip("lrpfast.Net is not available yet", allow_module_level=True)

# Conservation: |Σ R_in − Σ R_top| / Σ |R_top|.  The per-layer identities are exact up to
# float32 rounding of sums with a few hundred terms (~1e-6 relative) and, for ε = 1e-9, terms
# of order ε / |z_j| (negligible: relevance reaching an output is proportional to its
# activation, so tiny z_j carry tiny R_j).  1e-4 is an order of magnitude above what float32
# produces; a rule that leaks (bias share, padded taps, wrong α/β) is off by O(1e-2) or more.
CONSERVATION_TOL = 1e-4
# The same image alone or inside a batch goes through GEMMs of different shapes, which a BLAS
# may block differently: float32 rounding differences, ~1e-7 relative.  Nothing else may differ.
BATCH_TOL = 1e-6


def seeded(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("|".join(map(str, key)).encode()))


def stack(pool2: str, bias: bool):
    """conv-relu-maxpool-conv(group 2)-relu-pool-IP-relu-IP, with or without biases."""
    return [nets.conv("conv1", "data", 6, kernel=3, pad=1, bias=bias), nets.relu("relu1", "conv1"),
            nets.pool("pool1", "conv1", "MAX", 3, 2, 1),
            nets.conv("conv2", "pool1", 8, kernel=3, pad=1, group=2, bias=bias),
            nets.relu("relu2", "conv2"),
            nets.pool("pool2", "conv2", pool2, 2, 2),
            nets.ip("fc1", "pool2", 16, bias=bias), nets.relu("relu3", "fc1"),
            nets.ip("fc2", "fc1", 4, bias=bias)]


CONSERVING = {
    # rule id: (engine rules, pooling after conv2).  flat / w² ignore the activations and send
    # relevance to dead ReLU units; an average pooling over an all-zero window cannot pass that
    # on (its z-rule has nothing to be proportional to), so they are checked with max pooling.
    "eps1e-9": (lambda: R.Epsilon(1e-9), "AVE"),
    "eps1e-9-maxpool": (lambda: R.Epsilon(1e-9), "MAX"),
    "z": (lambda: R.Zero(), "MAX"),
    "a1b0": (lambda: R.AlphaBeta(1, 0), "AVE"),
    "a2b1": (lambda: R.AlphaBeta(2, 1), "AVE"),
    "a3b2": (lambda: R.AlphaBeta(3, 2), "MAX"),
    "flat": (lambda: R.Flat(), "MAX"),
    "wsquare": (lambda: R.WSquare(), "MAX"),
    "cmp_alpha2_flat-eps1e-9": (
        lambda: lrpfast.Composite(default=R.Epsilon(1e-9),
                                  by_type={"Convolution": R.AlphaBeta(2, 1)},
                                  first=(1, R.Flat()), eps=1e-9), "AVE"),
}


@pytest.mark.parametrize("N", [1, 3], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("rule_id", list(CONSERVING))
def test_conservation_bias_free_stack(rule_id, N):
    """Σ_i R_i(input) = the top-1 logit the relevance was seeded with.

    (αβ conserves only where both z⁺_j and z⁻_j are non-zero: a class whose logit has only
    negative contributions sends −β·R_j down, not R_j.  Seeding the top-1 class of a net with
    16 hidden units makes that practically impossible; the reference agrees either way.)"""
    make, pool2 = CONSERVING[rule_id]
    rng = seeded("conserve", rule_id, N)
    shape = (N, 3, 11, 10)
    tn = nets.build(stack(pool2, bias=False), shape, rng)
    net = lrpfast.Net.from_text(tn.text, tn.weights)
    x = nets.random_input(shape, rng)
    logits = net.forward(x)
    Rin = net.relevance(x, -1, rules=make())
    seed = logits.max(1)
    total = Rin.reshape(N, -1).astype(np.float64).sum(1)
    err = np.abs(total - seed) / np.abs(seed)
    assert np.all(err <= CONSERVATION_TOL), (rule_id, total, seed)


@pytest.mark.parametrize("rule_id", ["a2b1", "flat", "wsquare"])
def test_conservation_propagate_random_seed(rule_id):
    """Conservation for an arbitrary (signed) R_top, not only a logit seed: αβ (α − β = 1),
    flat and w² keep Σ R through a bias-free conv/maxpool stack whatever R_top is."""
    make, _ = CONSERVING[rule_id]
    rng = seeded("conserve-prop", rule_id)
    shape = (2, 3, 9, 9)
    tn = nets.build(stack("MAX", bias=False), shape, rng)
    net = lrpfast.Net.from_text(tn.text, tn.weights)
    x = nets.random_input(shape, rng)
    R_top = rng.normal(size=(2, 4)).astype(np.float32)
    Rin = net.propagate(x, R_top, top="fc2", rules=make())
    total = Rin.reshape(2, -1).astype(np.float64).sum(1)
    assert np.allclose(total, R_top.sum(1), rtol=CONSERVATION_TOL,
                       atol=CONSERVATION_TOL * np.abs(R_top).sum(1).max())


def test_bias_absorbs_relevance():
    """Not a conservation case: with biases, ε-LRP gives the bias its share, so the input total
    differs from the logit — and matches the reference that does the same."""
    rng = seeded("bias-absorbs")
    shape = (2, 3, 9, 9)
    layers = stack("AVE", bias=True)
    tn = nets.build(layers, shape, rng)
    net = lrpfast.Net.from_text(tn.text, tn.weights)
    x = nets.random_input(shape, rng)
    Rin = net.relevance(x, [0, 1], rules=R.Epsilon(0.01))
    logits = tn.ref.forward(x)["fc2"]
    R_top = np.zeros_like(logits)
    R_top[[0, 1], [0, 1]] = logits[[0, 1], [0, 1]]
    want = tn.ref.relevance("fc2", R_top, ref.uniform_rules(layers, ref.epsilon(0.01)), eps=0.01)
    assert ref.is_close_rel(Rin, want) <= 1e-4
    assert not np.allclose(Rin.reshape(2, -1).sum(1), R_top.sum(1), rtol=1e-3)


# --------------------------------------------------------------------------------------------
# batch independence
# --------------------------------------------------------------------------------------------

RULE_SET = {
    "eps": lambda: R.Epsilon(1e-3),
    "cmp_alpha2_flat": lambda: "cmp_alpha2_flat",
    "flat": lambda: R.Flat(),
    "zbox-first": lambda: lrpfast.Composite(default=R.AlphaBeta(1, 0),
                                            first=(1, R.ZBox(-3.0, 3.0))),
    "gradient": lambda: R.Gradient(),
    "guided": lambda: R.GuidedBackprop(),
}


@pytest.mark.parametrize("rule_id", list(RULE_SET))
def test_batch_independence(rule_id, deterministic):
    """Image i's relevance in a batch of 4 == its relevance alone, bit for bit in deterministic
    mode (by default another batch may round the products differently, and a gating rule such
    as guided backprop then flips where an activation sits at zero).  The prototxt declares a
    batch of 1 (as deploy files often declare some fixed N): any N must be accepted."""
    rng = seeded("batch", rule_id)
    shape = (4, 3, 11, 10)
    tn = nets.build(stack("AVE", bias=True), shape, rng, prototxt_shape=(1, 3, 11, 10))
    net = lrpfast.Net.from_text(tn.text, tn.weights)
    x = np.clip(nets.random_input(shape, rng), -3, 3)
    classes = [0, 3, 1, 2]
    batch = net.relevance(x, classes, rules=RULE_SET[rule_id]())
    for i in range(4):
        alone = net.relevance(x[i:i + 1], [classes[i]], rules=RULE_SET[rule_id]())
        np.testing.assert_array_equal(batch[i:i + 1], alone, err_msg=str(i))


def test_chunked_batch_equals_whole_batch():
    """A memory limit that forces one image per chunk gives the same relevances."""
    rng = seeded("chunks")
    shape = (3, 3, 11, 10)
    tn = nets.build(stack("MAX", bias=True), shape, rng)
    x = nets.random_input(shape, rng)
    whole = lrpfast.Net.from_text(tn.text, tn.weights)
    try:
        one_sample = whole._bytes_per_sample()   # see layer_memory
        chunked = lrpfast.Net.from_text(tn.text, tn.weights, memory_limit=one_sample)
    except TypeError:
        pytest.skip("Net has no memory_limit option")
    for rules in ["cmp_alpha2_flat", R.Epsilon(0.01)]:
        a = whole.relevance(x, -1, rules=rules)
        b = chunked.relevance(x, -1, rules=rules)
        assert ref.is_close_rel(b, a) <= BATCH_TOL


# --------------------------------------------------------------------------------------------
# idempotence
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule_id", list(RULE_SET))
def test_idempotent(rule_id):
    """The same call twice gives bit-identical results, also with a forward() of another
    input, a relevance() with other rules, and a propagate() in between; inputs are not
    modified."""
    rng = seeded("idem", rule_id)
    shape = (2, 3, 11, 10)
    tn = nets.build(stack("AVE", bias=True), shape, rng)
    net = lrpfast.Net.from_text(tn.text, tn.weights)
    x = nets.random_input(shape, rng)
    x_copy = x.copy()
    first = net.relevance(x, [1, 2], rules=RULE_SET[rule_id]())
    assert np.array_equal(x, x_copy)
    again = net.relevance(x, [1, 2], rules=RULE_SET[rule_id]())
    assert np.array_equal(first, again)
    other = nets.random_input(shape, rng)
    net.forward(other)
    net.forward(other, blobs=["conv1", "pool2"])
    net.relevance(other, -1, rules="cmp_alpha1")
    R_top = rng.normal(size=(2, 4)).astype(np.float32)
    R_copy = R_top.copy()
    net.propagate(other, R_top, top="fc2", rules=R.AlphaBeta(2, 1))
    assert np.array_equal(R_top, R_copy)
    third = net.relevance(x, [1, 2], rules=RULE_SET[rule_id]())
    assert np.array_equal(first, third)


def test_forward_idempotent_and_unaffected_by_relevance():
    rng = seeded("idem-forward")
    shape = (2, 3, 11, 10)
    tn = nets.build(stack("MAX", bias=True), shape, rng)
    net = lrpfast.Net.from_text(tn.text, tn.weights)
    x = nets.random_input(shape, rng)
    y1 = net.forward(x)
    net.relevance(x, -2, rules="cmp_alpha2_flat")
    net.relevance(nets.random_input(shape, rng), -1, rules=R.Gradient())
    y2 = net.forward(x)
    assert np.array_equal(y1, y2)
    assert ref.is_close_rel(y1, tn.ref.forward(x)["fc2"]) <= 1e-5


# --------------------------------------------------------------------------------------------
# seeds: a list of classes is one pass whose relevance is the sum of the single classes
# --------------------------------------------------------------------------------------------

# every rule is linear in the upper relevance (denominators depend on activations only), so
# seeding several classes at once equals the sum of single-class runs up to float32 rounding
SEED_SUM_TOL = 1e-5


@pytest.mark.parametrize("rules", ["cmp_alpha2_flat", "epsilon", "gradient"])
def test_class_list_is_sum_of_single_classes(rules):
    rng = seeded("classlist", rules)
    shape = (2, 3, 11, 10)
    tn = nets.build(stack("AVE", bias=True), shape, rng)
    net = lrpfast.Net.from_text(tn.text, tn.weights)
    x = nets.random_input(shape, rng)
    both = net.relevance(x, [[0, 2], [3, 1]], rules=rules)
    a = net.relevance(x, [0, 3], rules=rules)
    b = net.relevance(x, [2, 1], rules=rules)
    assert ref.is_close_rel(both, a + b) <= SEED_SUM_TOL
    # -1 is the top-1 class, -2 the top-5 summed (here: all 4 outputs)
    logits = net.forward(x)
    top1 = net.relevance(x, -1, rules=rules)
    assert ref.is_close_rel(top1, net.relevance(x, [int(k) for k in logits.argmax(1)],
                                                rules=rules)) == 0
    all4 = net.relevance(x, -2, rules=rules)
    assert ref.is_close_rel(all4, net.relevance(x, [[0, 1, 2, 3]] * 2, rules=rules)) \
        <= SEED_SUM_TOL
