"""Draw the encoder-decoder's architecture into docs/figures/seq2seq.png.

    python docs/tools/draw_seq2seq.py      # needs matplotlib (pip install npgpt[plot])
"""
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "figures"
ATTN, MLP, NORM, EMB = "#dde8f5", "#e6f5dd", "#f5e6dd", "#eeeeee"


def box(ax, x, y, text, w=2.6, h=0.5, color=ATTN):
    ax.add_patch(Rectangle((x - w / 2, y - h / 2), w, h, facecolor=color, edgecolor="black"))
    ax.text(x, y, text, ha="center", va="center", fontsize=9)


def arrow(ax, a, b, color="black", rad=0.0, label=None):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, color=color,
                                 connectionstyle=f"arc3,rad={rad}", lw=1.4))
    if label:
        ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, label, color=color, fontsize=8, ha="center",
                va="bottom")


def column(ax, x, y0, parts):
    """Stack boxes upwards from y0, arrows between them; returns the top box's y."""
    y = y0
    for i, (text, color) in enumerate(parts):
        box(ax, x, y, text, color=color)
        if i:
            arrow(ax, (x, y - 0.55), (x, y - 0.25))
        y += 0.8
    return y - 0.8


def draw():
    fig, ax = plt.subplots(figsize=(9, 7.2))
    ax.set_xlim(0, 9)
    ax.set_ylim(0, 7.2)
    ax.axis("off")
    ax.set_title("npgpt's encoder-decoder (pre-LN shown; post-LN moves each LN after its residual sum)", fontsize=10)
    # encoder
    enc = [("src (B, S) token ids", EMB), ("√C · wte[src] + positions", EMB), ("LN → self-attention\n(padding keys masked)", ATTN),
           ("LN → MLP (ReLU or GELU)", MLP), ("final LN (pre-LN only)", NORM), ("memory (B, S, C)", EMB)]
    top_enc = column(ax, 2.0, 0.8, enc)
    ax.add_patch(Rectangle((0.55, 2.1), 2.9, 1.4, fill=False, ls="--", edgecolor="gray"))
    ax.text(0.5, 1.95, "× n_encoder_layer; each sub-layer: x + f(LN(x))", fontsize=8, color="gray", va="center")
    # decoder
    dec = [("tgt_in = BOS + target (B, T)", EMB), ("√C · wte[tgt_in] + positions", EMB),
           ("LN → causal self-attention", ATTN), ("LN → cross-attention\nq: decoder, k|v: memory", ATTN),
           ("LN → MLP", MLP), ("final LN (pre-LN only)", NORM), ("logits = h @ wteᵀ (tied)", EMB),
           ("cross-entropy vs target + EOS", NORM)]
    column(ax, 6.5, 0.8, dec)
    ax.add_patch(Rectangle((5.05, 2.1), 2.9, 2.2, fill=False, ls="--", edgecolor="gray"))
    ax.text(8.0, 3.4, "× n_decoder_layer", fontsize=8, color="gray", rotation=90, va="center")
    arrow(ax, (3.3, top_enc), (5.2, 3.2), "tab:red", rad=-0.25, label="keys, values")
    ax.text(4.5, 0.15, "decoding: memory's k|v computed once per source; self-attention k|v cached per position",
            ha="center", fontsize=8)
    return fig


def main():
    OUT.mkdir(exist_ok=True)
    fig = draw()
    fig.savefig(OUT / "seq2seq.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {OUT / 'seq2seq.png'}")


if __name__ == "__main__":
    main()
