"""The classifier (npgpt/classify.py): finite differences, padding invariance, torch parity."""
import numpy as np
import pytest

from npgpt import gradcheck
from npgpt.classify import GPTClassifier
from npgpt.model import GPT, GPTConfig

V, K = 11, 3


def make_classifier(backend="numpy", dtype="float64", lm_weight=0.0, dropout=0.0, seed=0, spread=0.3):
    config = GPTConfig(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=8, dropout=dropout,
                       dtype=dtype, backend=backend)
    gpt = GPT(config, seed=seed)
    clf = GPTClassifier(gpt, K, lm_weight=lm_weight, seed=seed)
    if spread:  # away from GPT-2's tiny init, so every gradient is well above rounding noise
        clf.flat_params += np.random.default_rng(seed + 1).normal(0.0, spread, clf.num_params).astype(clf.dtype)
    return clf


def batch(rng, B=3, T=6):
    idx = rng.integers(0, V, (B, T))
    lengths = np.array([T, 1, 4][:B])
    labels = rng.integers(0, K, B)
    return idx, lengths, labels


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("lm_weight", [0.0, 0.5])
def test_classifier_gradients_match_finite_differences(backend, lm_weight):
    clf = make_classifier(backend, lm_weight=lm_weight)
    idx, lengths, labels = batch(np.random.default_rng(1))

    def loss(_=None):
        return clf.forward(idx, lengths, labels)[0]

    grads = clf.backward(clf.forward(idx, lengths, labels)[1])
    rng = np.random.default_rng(2)
    pairs = {}
    for name, p in clf.params.items():
        sel = rng.choice(p.size, size=min(p.size, 6), replace=False)
        numerical = gradcheck.numerical_gradient(loss, p, 1.0, gradcheck.MODEL_EPS, sel).reshape(-1)[sel]
        pairs[name] = (grads[name].reshape(-1)[sel], numerical)
    report = gradcheck.compare(f"classifier[{backend}]", pairs)
    assert report.passed, str(report)


def test_a_head_gradient_sent_to_the_wrong_token_is_caught(monkeypatch):
    from npgpt.layers import pool_last

    def wrong_backward(dpooled, cache):
        last, shape = cache
        dh = np.zeros(shape, dtype=dpooled.dtype)
        dh[:, -1] = dpooled  # always the last column: wrong for every padded row
        return dh

    clf = make_classifier()
    idx, lengths, labels = batch(np.random.default_rng(3))
    monkeypatch.setattr(pool_last, "backward", wrong_backward)
    grads = clf.backward(clf.forward(idx, lengths, labels)[1])
    p = clf.params["h.0.mlp.c_fc.weight"]
    numerical = gradcheck.numerical_gradient(lambda _: clf.forward(idx, lengths, labels)[0], p, 1.0, gradcheck.MODEL_EPS)
    assert gradcheck.relative_error(grads["h.0.mlp.c_fc.weight"], numerical) > 1e-3


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_what_padding_and_batch_mates_hold_changes_nothing_bit_for_bit(backend):
    """The strict check that nothing leaks from the padding or from other texts: with the
    shapes fixed, any tokens in the padding and any batch-mates give the same bits."""
    clf = make_classifier(backend)
    rng = np.random.default_rng(4)
    for position in range(3):  # the text first, in the middle, last
        idx = rng.integers(0, V, (3, 7))
        lengths = rng.integers(1, 8, 3)
        lengths[position] = 4
        reference = clf.logits(idx, lengths)[position]
        for _ in range(4):
            other = rng.integers(0, V, (3, 7))
            other[position, :4] = idx[position, :4]  # the same text; new padding, new batch-mates
            np.testing.assert_array_equal(clf.logits(other, lengths)[position], reference)


def test_a_leak_from_the_padding_is_caught(monkeypatch):
    """The bit-for-bit check fails for a model whose attention sees the future (a non-causal mask)."""
    from npgpt.layers import attention

    def leaky_forward(qkv, n_head):
        B, T, C3 = qkv.shape
        C, hs = C3 // 3, C3 // 3 // n_head
        q, k, v = (a.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)  # no causal mask
        return (p @ v).transpose(0, 2, 1, 3).reshape(B, T, C), None

    clf = make_classifier("numpy")
    monkeypatch.setattr(attention, "forward", leaky_forward)
    rng = np.random.default_rng(5)
    idx, lengths = rng.integers(0, V, (2, 6)), np.array([3, 6])
    other = idx.copy()
    other[0, 3:] = (idx[0, 3:] + 1) % V  # new padding after the first text
    assert not np.array_equal(clf.logits(other, lengths)[0], clf.logits(idx, lengths)[0])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_how_much_padding_and_how_many_batch_mates_change_only_rounding(backend):
    """A different batch shape changes how BLAS (and NumPy's pairwise sums) group a row's
    products, so the logits may move by rounding, never by more (docs/classify.md)."""
    clf = make_classifier(backend)
    rng = np.random.default_rng(6)
    text = rng.integers(0, V, 4)
    alone = clf.logits(text[None, :], np.array([4]))[0]
    for pad in range(0, 5):
        for mates in range(0, 3):
            T = 4 + pad
            idx = rng.integers(0, V, (1 + mates, T))
            row = rng.integers(0, 1 + mates)
            idx[row, :4] = text
            lengths = rng.integers(1, T + 1, 1 + mates)
            lengths[row] = 4
            np.testing.assert_allclose(clf.logits(idx, lengths)[row], alone, rtol=1e-13, atol=1e-15)


def test_numba_equals_numpy():
    a, b = make_classifier("numpy", lm_weight=0.3), make_classifier("numba", lm_weight=0.3)
    idx, lengths, labels = batch(np.random.default_rng(5))
    la, ca = a.forward(idx, lengths, labels)
    lb, cb = b.forward(idx, lengths, labels)
    assert la == pytest.approx(lb, rel=1e-12)
    ga, gb = a.backward(ca), b.backward(cb)
    for name in a.params:
        np.testing.assert_allclose(gb[name], ga[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_bad_arguments_are_refused():
    clf = make_classifier()
    idx = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="lengths"):
        clf.forward(idx, np.array([0, 3]), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        clf.forward(idx, np.array([1, 3]), np.array([0, K]))
    with pytest.raises(ValueError, match="num_labels"):
        GPTClassifier(GPT(GPTConfig(vocab_size=V, n_layer=1, n_embd=8, n_head=2, backend="numpy")), 1)


def test_torch_parity_with_transformers_sequence_classification():
    """Same weights in transformers' GPT2ForSequenceClassification: loss and every gradient, float64."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    clf = make_classifier("numpy")
    cfg = clf.config
    hf_config = transformers.GPT2Config(vocab_size=V, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                                        n_layer=cfg.n_layer, n_head=cfg.n_head, num_labels=K,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                        activation_function="gelu_new", layer_norm_epsilon=1e-5,
                                        pad_token_id=V - 1)
    hf = transformers.GPT2ForSequenceClassification(hf_config).double().eval()
    state = {}
    for name, p in clf.params.items():
        key = name if name == "score.weight" else "transformer." + name
        state[key] = torch.tensor(p.T.copy() if name == "score.weight" else p)  # nn.Linear stores (out, in)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith(("attn.bias", "attn.masked_bias")) for k in missing), missing
    rng = np.random.default_rng(6)
    idx = rng.integers(0, V - 1, (3, 6))  # the pad id V-1 never appears in a text
    lengths = np.array([6, 2, 4])
    for b, n in enumerate(lengths):
        idx[b, n:] = V - 1  # HF finds each text's end from the pad id; npgpt is told the lengths
    labels = rng.integers(0, K, 3)
    loss, cache = clf.forward(idx, lengths, labels)
    grads = clf.backward(cache)
    out = hf(input_ids=torch.tensor(idx), labels=torch.tensor(labels))
    out.loss.backward()
    assert loss == pytest.approx(out.loss.item(), rel=1e-10)
    named = dict(hf.named_parameters())
    for name, g in grads.items():
        key = name if name == "score.weight" else "transformer." + name
        expected = named[key].grad.numpy()
        np.testing.assert_allclose(g, expected.T if name == "score.weight" else expected, rtol=1e-9, atol=1e-12,
                                   err_msg=name)
