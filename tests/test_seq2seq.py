"""The encoder-decoder: whole-model gradients (both backends, pre and post norm), torch
parity, causality, padding invariance, decoding, and the optimizer/checkpoint contract."""
import numpy as np
import pytest

from npgpt import gradcheck
from npgpt.seq2seq import Seq2Seq, TransformerConfig

BACKENDS = ("numpy", "numba")
NORMS = ("pre", "post")


def tiny_config(**overrides):
    fields = dict(vocab_size=7, src_vocab_size=9, block_size=6, n_encoder_layer=2, n_decoder_layer=2, n_head=2,
                  n_embd=8, n_ff=12, activation="gelu", dtype="float64", backend="numpy")
    fields.update(overrides)
    return TransformerConfig(**fields)


def perturbed_model(config, seed=0, std=0.1):
    """A model whose gains, biases and projections are all away from their init (zero biases
    and unit gains would hide a gradient routed to the wrong place)."""
    model = Seq2Seq(config, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for p in model.params.values():
        p += rng.normal(0.0, std, p.shape)
    return model


# A batch with source padding (row 1 is 2 real tokens of 5), target padding, and S != T.
SRC = np.array([[3, 4, 5, 6, 7], [4, 3, 0, 0, 0]])
TGT_IN = np.array([[1, 3, 4], [1, 5, 0]])
TARGETS = np.array([[3, 4, 2], [5, 2, 0]])


def model_gradcheck(model, src, tgt_in, targets, max_entries=5, eps=gradcheck.MODEL_EPS, seed=0, **forward_kwargs):
    """Every parameter tensor of a Seq2Seq against central differences (max_entries random entries each)."""
    rng = np.random.default_rng(seed)
    grads = model.backward(model.forward(src, tgt_in, targets, **forward_kwargs)[1])

    def loss(_):
        return model.forward(src, tgt_in, targets, **forward_kwargs)[0]

    pairs = {}
    for name, p in model.params.items():
        sel = np.arange(p.size) if p.size <= max_entries else rng.choice(p.size, max_entries, replace=False)
        numerical = gradcheck.numerical_gradient(loss, p, 1.0, eps, sel).reshape(-1)[sel]
        pairs[name] = (grads[name].reshape(-1)[sel], numerical)
    return gradcheck.compare("seq2seq", pairs)


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", NORMS)
def test_whole_model_gradcheck_with_padding(backend, norm):
    """Source and target padding, S = 5 != T = 3, separate vocabularies, sinusoidal positions."""
    model = perturbed_model(tiny_config(backend=backend, norm=norm))
    report = model_gradcheck(model, SRC, TGT_IN, TARGETS)
    assert report.passed, str(report)
    assert len(report.results) == len(model.params)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", NORMS)
def test_whole_model_gradcheck_length_one(backend, norm):
    """T = 1 and S = 1, shared embeddings, learned positions, label smoothing, one block each."""
    cfg = tiny_config(backend=backend, norm=norm, src_vocab_size=0, share_embeddings=True, positions="learned",
                      n_encoder_layer=1, n_decoder_layer=1, label_smoothing=0.1)
    model = perturbed_model(cfg, seed=1)
    report = model_gradcheck(model, np.array([[4], [5]]), np.array([[1], [1]]), np.array([[3], [6]]))
    assert report.passed, str(report)


@pytest.mark.parametrize("backend", BACKENDS)
def test_relu_model_gradcheck(backend):
    """ReLU has a kink at 0, where a difference quotient is wrong; the check first makes sure
    no pre-activation is within reach of it, so a failure is the gradient's fault."""
    import npgpt.seq2seq as s2s

    cfg = tiny_config(backend=backend, activation="relu", norm="post", n_ff=4, n_encoder_layer=1, n_decoder_layer=1)
    model = perturbed_model(cfg, seed=18, std=0.5)  # a seed whose ReLU inputs are all >= 0.27 from 0
    nearest = []
    original = s2s.relu_forward
    try:
        s2s.relu_forward = lambda x: (nearest.append(float(np.abs(x).min())), original(x))[1]
        model.forward(SRC, TGT_IN, TARGETS)
    finally:
        s2s.relu_forward = original
    eps = gradcheck.DEFAULT_EPS  # 1e-3: far from every kink (guarded below), and above rounding noise
    assert min(nearest) > 100 * eps, "pick another seed: a ReLU input sits at the kink"
    report = model_gradcheck(model, SRC, TGT_IN, TARGETS, eps=eps)
    assert report.passed, str(report)


def test_gradcheck_catches_a_broken_backward():
    """A post-LN residual backward that forgets the skip path's gradient must fail the check."""

    class Broken(Seq2Seq):
        def _residual_backward(self, dout, cache, norm, sublayer_backward, G):
            c_ln, c_f, c_drop = cache
            ds = self._layernorm_backward(dout, c_ln, G, norm)
            return sublayer_backward(self.ops.dropout.backward(ds, c_drop), c_f)  # no "ds +"

    model = Seq2Seq(tiny_config(norm="post", n_encoder_layer=1, n_decoder_layer=1))
    assert model_gradcheck(model, SRC, TGT_IN, TARGETS).passed  # the real one passes on this very model

    model = Broken(tiny_config(norm="post", n_encoder_layer=1, n_decoder_layer=1))
    report = model_gradcheck(model, SRC, TGT_IN, TARGETS)
    assert not report.passed


def test_backends_agree():
    """The numba kernels give the numpy reference's loss and gradients (float64)."""
    results = []
    for backend in BACKENDS:
        model = perturbed_model(tiny_config(backend=backend, label_smoothing=0.1, norm="post"))
        loss, cache = model.forward(SRC, TGT_IN, TARGETS)
        results.append((loss, model.backward(cache)))
    (l0, g0), (l1, g1) = results
    assert abs(l0 - l1) < 1e-12
    for name in g0:
        np.testing.assert_allclose(g1[name], g0[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_float32_numba_matches_float64():
    cfg = tiny_config(backend="numba")
    m64 = perturbed_model(cfg)
    m32 = Seq2Seq(tiny_config(backend="numba", dtype="float32"))
    m32.flat_params[...] = m64.flat_params
    l64, l32 = m64.forward(SRC, TGT_IN, TARGETS)[0], m32.forward(SRC, TGT_IN, TARGETS)[0]
    assert abs(l64 - l32) < 1e-4


def test_backward_fills_a_given_buffer_and_refuses_a_spent_cache():
    model = perturbed_model(tiny_config())
    out = np.full(model.num_params, np.nan)
    loss, cache = model.forward(SRC, TGT_IN, TARGETS)
    G = model.backward(cache, out=out, dloss=2.0)
    assert np.isfinite(out).all() and np.shares_memory(G["decoder.wte.weight"], out)
    ref = model.backward(model.forward(SRC, TGT_IN, TARGETS)[1])
    np.testing.assert_allclose(out, 2.0 * np.concatenate([g.reshape(-1) for g in ref.values()]), rtol=1e-12)
    with pytest.raises(ValueError, match="already used"):
        model.backward(cache)


# ------------------------------------------------------------------ structure
@pytest.mark.parametrize("norm", NORMS)
def test_decoder_is_causal(norm):
    """Changing target tokens after position t leaves the logits at positions <= t unchanged."""
    model = perturbed_model(tiny_config(norm=norm, block_size=8), std=0.5)
    rng = np.random.default_rng(0)
    tgt = rng.integers(3, 7, size=(2, 6))
    base = model.logits(SRC, tgt)
    for t in range(5):
        changed = tgt.copy()
        changed[:, t + 1:] = rng.integers(3, 7, size=(2, 5 - t))
        other = model.logits(SRC, changed)
        np.testing.assert_allclose(other[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-12)
        assert not np.allclose(other[:, t + 1:], base[:, t + 1:])  # the change does reach later positions


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", NORMS)
def test_source_padding_does_not_change_the_outputs(backend, norm):
    """Padding a source (more PAD columns, or a batch-mate's longer source) leaves every logit as it was."""
    model = perturbed_model(tiny_config(backend=backend, norm=norm, block_size=8), std=0.5)
    src = np.array([[3, 4, 5]])
    tgt = np.array([[1, 4, 6, 3]])
    alone = model.logits(src, tgt)
    padded = model.logits(np.array([[3, 4, 5, 0, 0, 0]]), tgt)
    np.testing.assert_allclose(padded, alone, rtol=0, atol=1e-12)
    in_batch = model.logits(np.array([[3, 4, 5, 0, 0], [5, 6, 7, 8, 3]]), np.repeat(tgt, 2, axis=0))
    np.testing.assert_allclose(in_batch[:1], alone, rtol=0, atol=1e-12)
    assert not np.allclose(in_batch[1], alone[0])  # the source matters at all


def test_target_padding_is_ignored_by_the_loss():
    model = perturbed_model(tiny_config())
    short = model.forward(SRC[:1], TGT_IN[:1, :2], TARGETS[:1, :2])[0]
    padded = model.forward(SRC[:1], np.array([[1, 3, 0, 0]]), np.array([[3, 4, 0, 0]]))[0]
    assert abs(short - padded) < 1e-12


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="norm"):
        TransformerConfig(norm="middle")
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="one vocabulary"):
        TransformerConfig(vocab_size=10, src_vocab_size=12, share_embeddings=True)
    model = Seq2Seq(tiny_config())
    with pytest.raises(ValueError, match="block_size"):
        model.forward(np.ones((1, 7), int), TGT_IN[:1], TARGETS[:1])
    with pytest.raises(ValueError, match="tgt_in ids"):
        model.forward(SRC, TGT_IN + 10, TARGETS)
    with pytest.raises(ValueError, match="targets"):
        model.forward(SRC, TGT_IN, TARGETS[:, :2])


def test_optimizer_clipping_and_checkpoint_work_unchanged(tmp_path):
    """AdamW, global-norm clipping and checkpoint.save take a Seq2Seq as they take a GPT."""
    from npgpt import checkpoint
    from npgpt.optim import AdamW
    from npgpt.seq2seq_data import PairTokenizer
    from npgpt.tokenizers.char import CharTokenizer

    model = perturbed_model(tiny_config(vocab_size=8, src_vocab_size=0, share_embeddings=True))
    opt = AdamW(model, grad_clip=0.5)
    grad = np.zeros_like(model.flat_params)
    before = model.flat_params.copy()
    model.backward(model.forward(SRC % 8, TGT_IN, TARGETS)[1], out=grad)
    norm = opt.step(grad, 1e-3)
    assert norm > 0 and not np.array_equal(before, model.flat_params)
    tok = PairTokenizer(CharTokenizer("abcde"))
    state = opt.state_dict()
    snapshot = checkpoint.save(str(tmp_path), model, tok, {"iter": 1}, {"m": state["m"], "v": state["v"]})
    from npgpt.seq2seq_cli import load_seq2seq

    loaded, loaded_tok, _ = load_seq2seq(str(tmp_path))
    assert loaded.config == model.config and snapshot
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)
    assert loaded_tok.to_dict() == tok.to_dict()


# ------------------------------------------------------------------ torch parity
def torch_twin(model):
    """A torch.nn.Transformer holding model's weights (float64), and a loss function of the batch.

    nn.Transformer has no embeddings or output layer, so those are written
    here as npgpt has them (sqrt(C) * wte[idx] + positions; logits = h @ wte^T).
    It always builds a final encoder and decoder LayerNorm: npgpt's pre-LN
    model has them too (encoder.ln_f, decoder.ln_f); npgpt's post-LN model,
    like the paper, has none, so they are removed (set to None) for norm_first=False.
    GELU: npgpt's tanh approximation, passed to torch as its activation.
    """
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    cfg, P = model.config, model.params
    activation = "relu" if cfg.activation == "relu" else (lambda x: F.gelu(x, approximate="tanh"))
    net = torch.nn.Transformer(d_model=cfg.n_embd, nhead=cfg.n_head, num_encoder_layers=cfg.n_encoder_layer,
                               num_decoder_layers=cfg.n_decoder_layer, dim_feedforward=cfg.ff_width, dropout=0.0,
                               activation=activation, batch_first=True, norm_first=cfg.norm == "pre",
                               dtype=torch.float64)
    if cfg.norm == "post":
        net.encoder.norm = None
        net.decoder.norm = None

    def put(param, array):  # weights are (in, out) in npgpt, (out, in) in torch
        with torch.no_grad():
            param.copy_(torch.from_numpy(np.ascontiguousarray(array)))

    def norm(module, prefix):
        put(module.weight, P[prefix + ".weight"])
        put(module.bias, P[prefix + ".bias"])

    def linear(module, prefix):
        put(module.weight, P[prefix + ".weight"].T)
        put(module.bias, P[prefix + ".bias"])

    def mlp(layer, prefix):
        linear(layer.linear1, prefix + "mlp.c_fc")
        linear(layer.linear2, prefix + "mlp.c_proj")

    for i, layer in enumerate(net.encoder.layers):
        pre = f"encoder.h.{i}."
        put(layer.self_attn.in_proj_weight, P[pre + "attn.c_attn.weight"].T)
        put(layer.self_attn.in_proj_bias, P[pre + "attn.c_attn.bias"])
        linear(layer.self_attn.out_proj, pre + "attn.c_proj")
        norm(layer.norm1, pre + "ln_1")
        norm(layer.norm2, pre + "ln_2")
        mlp(layer, pre)
    for i, layer in enumerate(net.decoder.layers):
        pre = f"decoder.h.{i}."
        put(layer.self_attn.in_proj_weight, P[pre + "attn.c_attn.weight"].T)
        put(layer.self_attn.in_proj_bias, P[pre + "attn.c_attn.bias"])
        linear(layer.self_attn.out_proj, pre + "attn.c_proj")
        put(layer.multihead_attn.in_proj_weight,
            np.concatenate([P[pre + "cross.c_q.weight"], P[pre + "cross.c_kv.weight"]], axis=1).T)
        put(layer.multihead_attn.in_proj_bias, np.concatenate([P[pre + "cross.c_q.bias"], P[pre + "cross.c_kv.bias"]]))
        linear(layer.multihead_attn.out_proj, pre + "cross.c_proj")
        for k in (1, 2, 3):
            norm(getattr(layer, f"norm{k}"), pre + f"ln_{k}")
        mlp(layer, pre)
    if cfg.norm == "pre":
        norm(net.encoder.norm, "encoder.ln_f")
        norm(net.decoder.norm, "decoder.ln_f")
    tables = {name: torch.tensor(P[name], requires_grad=True) for name in P if "wte" in name or "wpe" in name}

    def loss_of(src, tgt_in, targets):
        src_t, tgt_t = torch.from_numpy(src), torch.from_numpy(tgt_in)
        scale = cfg.n_embd ** 0.5

        def embed(idx, side, wte_name):
            T = idx.shape[1]
            positions = (torch.from_numpy(model.sinusoid[:T]) if cfg.positions == "sinusoidal"
                         else tables[side + ".wpe.weight"][:T])
            return tables[wte_name][idx] * scale + positions

        padding = src_t == cfg.pad_id
        causal = torch.triu(torch.ones(tgt_in.shape[1], tgt_in.shape[1], dtype=torch.bool), 1)
        h = net(embed(src_t, "encoder", model.src_wte), embed(tgt_t, "decoder", model.tgt_wte), tgt_mask=causal,
                src_key_padding_mask=padding, memory_key_padding_mask=padding, tgt_is_causal=True)
        logits = h @ tables[model.tgt_wte].T
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(targets).reshape(-1),
                               ignore_index=cfg.pad_id, label_smoothing=cfg.label_smoothing)

    def grads():
        out = {name: t.grad.numpy() for name, t in tables.items()}
        for tname, t in net.named_parameters():
            out["torch:" + tname] = t.grad.numpy()
        return out

    return net, loss_of, grads


def torch_grad_in_npgpt_layout(model, tg):
    """{npgpt name: gradient} read out of torch's parameter gradients."""
    cfg = model.config
    out = {name: g for name, g in tg.items() if not name.startswith("torch:")}
    t = {name[6:]: g for name, g in tg.items() if name.startswith("torch:")}
    C = cfg.n_embd
    for side, n in (("encoder", cfg.n_encoder_layer), ("decoder", cfg.n_decoder_layer)):
        for i in range(n):
            pre, tp = f"{side}.h.{i}.", f"{side}.layers.{i}."
            out[pre + "attn.c_attn.weight"] = t[tp + "self_attn.in_proj_weight"].T
            out[pre + "attn.c_attn.bias"] = t[tp + "self_attn.in_proj_bias"]
            out[pre + "attn.c_proj.weight"] = t[tp + "self_attn.out_proj.weight"].T
            out[pre + "attn.c_proj.bias"] = t[tp + "self_attn.out_proj.bias"]
            out[pre + "mlp.c_fc.weight"] = t[tp + "linear1.weight"].T
            out[pre + "mlp.c_fc.bias"] = t[tp + "linear1.bias"]
            out[pre + "mlp.c_proj.weight"] = t[tp + "linear2.weight"].T
            out[pre + "mlp.c_proj.bias"] = t[tp + "linear2.bias"]
            for k in (1, 2, 3) if side == "decoder" else (1, 2):
                out[pre + f"ln_{k}.weight"] = t[tp + f"norm{k}.weight"]
                out[pre + f"ln_{k}.bias"] = t[tp + f"norm{k}.bias"]
            if side == "decoder":
                w, b = t[tp + "multihead_attn.in_proj_weight"].T, t[tp + "multihead_attn.in_proj_bias"]
                out[pre + "cross.c_q.weight"], out[pre + "cross.c_kv.weight"] = w[:, :C], w[:, C:]
                out[pre + "cross.c_q.bias"], out[pre + "cross.c_kv.bias"] = b[:C], b[C:]
                out[pre + "cross.c_proj.weight"] = t[tp + "multihead_attn.out_proj.weight"].T
                out[pre + "cross.c_proj.bias"] = t[tp + "multihead_attn.out_proj.bias"]
        if cfg.norm == "pre":
            out[side + ".ln_f.weight"] = t[side + ".norm.weight"]
            out[side + ".ln_f.bias"] = t[side + ".norm.bias"]
    return out


PARITY_CASES = [("numpy", norm_first, variant) for norm_first in (True, False)
                for variant in ("relu-sinusoidal-separate", "gelu-learned-shared")]
PARITY_CASES += [("numba", norm_first, "relu-sinusoidal-separate") for norm_first in (True, False)]


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
@pytest.mark.parametrize("backend, norm_first, variant", PARITY_CASES)
def test_torch_transformer_parity(backend, norm_first, variant):
    """Loss and every gradient equal torch.nn.Transformer's with copied weights, float64, <= 1e-10."""
    activation, positions, sharing = variant.split("-")
    cfg = tiny_config(norm="pre" if norm_first else "post", activation=activation, positions=positions,
                      share_embeddings=sharing == "shared", src_vocab_size=0 if sharing == "shared" else 9,
                      label_smoothing=0.1, n_encoder_layer=2, n_decoder_layer=2, backend=backend)
    model = perturbed_model(cfg, seed=3, std=0.3)
    net, loss_of, torch_grads = torch_twin(model)
    src = np.array([[3, 4, 5, 6, 5], [4, 3, 0, 0, 0]])
    loss, cache = model.forward(src, TGT_IN, TARGETS)
    grads = model.backward(cache)
    t_loss = loss_of(src, TGT_IN, TARGETS)
    t_loss.backward()
    assert abs(loss - t_loss.item()) <= 1e-10
    theirs = torch_grad_in_npgpt_layout(model, torch_grads())
    assert set(theirs) == set(grads)
    for name, g in grads.items():
        np.testing.assert_allclose(g, theirs[name], rtol=0, atol=1e-10, err_msg=name)
