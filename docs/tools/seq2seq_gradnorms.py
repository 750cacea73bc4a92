"""Gradient norms per block at initialisation, pre-LN against post-LN, as a Markdown table.

    python docs/tools/seq2seq_gradnorms.py            # 6 + 6 layers, n_embd 128, a batch of `reverse`

For each encoder and decoder block, the L2 norm of the gradient of all
its parameters, for the same batch and the same initial weights (the two
models differ only in where their layer norms sit).  docs/seq2seq.md
shows the output and explains it.
"""
import argparse

import numpy as np

from npgpt import seq2seq_data as data
from npgpt.seq2seq import Seq2Seq, TransformerConfig


def block_norms(model, batch):
    """{"encoder.h.0": norm, ..., "decoder.h.5": norm, "embeddings": norm} of the loss's gradient."""
    grads = model.backward(model.forward(*batch)[1])
    norms = {}
    for name, g in grads.items():
        parts = name.split(".")
        key = ".".join(parts[:3]) if parts[1] == "h" else "embeddings" if "wte" in name or "wpe" in name else None
        if key is not None:
            norms[key] = norms.get(key, 0.0) + float(np.sum(g.astype(np.float64) ** 2))
    return {k: v ** 0.5 for k, v in norms.items()}


def xavier(model, rng):
    """Every linear weight U(-a, a), a = sqrt(6 / (fan_in + fan_out)): branches as loud as their input."""
    for name, p in model.params.items():
        if p.ndim == 2 and "wte" not in name and "wpe" not in name:
            a = (6.0 / sum(p.shape)) ** 0.5
            p[...] = rng.uniform(-a, a, p.shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", choices=("npgpt", "xavier"), default="npgpt",
                        help="npgpt's GPT-2-style init, or Xavier-uniform linear weights (torch.nn.Transformer's)")
    args = parser.parse_args()
    tok = data.PairTokenizer(data.build_pair_tokenizer("char", [], alphabet=data.task_alphabet("reverse")).source)
    pairs = data.synthetic_pairs("reverse", 64, np.random.default_rng(args.seed), max_len=10)
    batch = data.make_batch(data.encode_pairs(pairs, tok, 16)[0])
    table = {}
    for norm in ("pre", "post"):
        cfg = TransformerConfig(vocab_size=tok.vocab_size, block_size=16, n_encoder_layer=args.layers,
                                n_decoder_layer=args.layers, n_head=4, n_embd=args.n_embd, norm=norm,
                                share_embeddings=True, dtype="float64", backend="numpy")
        model = Seq2Seq(cfg, seed=args.seed)
        if args.init == "xavier":
            xavier(model, np.random.default_rng(args.seed))
        table[norm] = block_norms(model, batch)
    print(f"| block ({args.layers}+{args.layers} layers, n_embd {args.n_embd}, {args.init} init) | pre-LN | post-LN |")
    print("|---|---|---|")
    for key in table["pre"]:
        print(f"| {key} | {table['pre'][key]:.3g} | {table['post'][key]:.3g} |")


if __name__ == "__main__":
    main()
