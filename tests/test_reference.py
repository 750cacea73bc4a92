"""npgpt/reference.py (the model to read) computes what GPT computes, on both backends."""
import numpy as np
import pytest

from npgpt import GPT, GPTConfig, reference


def model_and_batch(backend, bias=True, seed=0):
    config = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=12, bias=bias,
                       dtype="float64", backend=backend)
    model = GPT(config, seed=seed)
    model.flat_params += np.random.default_rng(seed).normal(0, 0.05, model.num_params)  # biases and gains off their init
    rng = np.random.default_rng(seed + 1)
    idx, targets = rng.integers(0, 13, (3, 7)), rng.integers(0, 13, (3, 7))  # T < block_size
    return model, idx, targets


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_reference_equals_the_model(backend, bias):
    model, idx, targets = model_and_batch(backend, bias)
    logits, loss, cache = reference.forward(model.params, model.config, idx, targets)
    grads = reference.backward(model.params, cache)
    np.testing.assert_allclose(logits, model.logits(idx), rtol=1e-10, atol=1e-12)
    model_loss, model_cache = model.forward(idx, targets)
    model_grads = model.backward(model_cache)
    assert loss == pytest.approx(model_loss, rel=1e-12)
    assert list(grads) == list(model_grads)  # every parameter, in storage order
    for name in grads:
        np.testing.assert_allclose(grads[name], model_grads[name], rtol=1e-8, atol=1e-12, err_msg=name)


def test_reference_gradients_match_finite_differences():
    """An oracle independent of the model: central differences of the reference's own loss."""
    model, idx, targets = model_and_batch("numpy", seed=3)
    loss, grads = reference.loss_and_grads(model.params, model.config, idx, targets)
    rng = np.random.default_rng(4)
    h = 1e-5
    for name in ("wte.weight", "h.0.attn.c_attn.weight", "h.1.ln_2.bias", "h.1.mlp.c_fc.weight", "ln_f.weight"):
        p = model.params[name].reshape(-1)
        for i in rng.choice(p.size, 3, replace=False):
            old = p[i]
            p[i] = old + h
            up = reference.forward(model.params, model.config, idx, targets)[1]
            p[i] = old - h
            down = reference.forward(model.params, model.config, idx, targets)[1]
            p[i] = old
            numeric = (up - down) / (2 * h)
            analytic = grads[name].reshape(-1)[i]
            assert abs(analytic - numeric) <= 1e-6 * max(abs(analytic) + abs(numeric), 1e-8), (name, i)


def test_a_reference_missing_the_tied_head_gradient_would_be_caught():
    """The comparison can fail: the embedding lookup's gradient alone is far from wte's full gradient."""
    model, idx, targets = model_and_batch("numpy")
    _, grads = reference.loss_and_grads(model.params, model.config, idx, targets)
    _, _, cache = reference.forward(model.params, model.config, idx, targets)
    _, dwte_head, _ = reference.linear.backward(reference.cross_entropy.backward(1.0, cache[4]), cache[3])
    lookup_only = grads["wte.weight"] - dwte_head.T
    assert not np.allclose(lookup_only, grads["wte.weight"], rtol=1e-3, atol=1e-6)


def test_reference_is_short_enough_to_read_in_one_sitting():
    import inspect

    body = [line for line in inspect.getsource(reference).splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(body) <= 130, len(body)
