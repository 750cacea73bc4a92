"""Draw the docs' diagrams into docs/figures/*.png.

    python docs/tools/draw_diagrams.py      # needs matplotlib (pip install npgpt[plot])
"""
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "figures"


def box(ax, x, y, text, w=1.6, h=0.6, color="#dde8f5"):
    ax.add_patch(Rectangle((x - w / 2, y - h / 2), w, h, facecolor=color, edgecolor="black"))
    ax.text(x, y, text, ha="center", va="center", fontsize=10)


def arrow(ax, a, b, color="black", label=None, rad=0.0):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=14, color=color,
                                 connectionstyle=f"arc3,rad={rad}", lw=1.6))
    if label:
        ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.15, label, color=color, fontsize=9, ha="center")


def canvas(w, h, title):
    fig, ax = plt.subplots(figsize=(w, h))
    ax.set_xlim(0, w)
    ax.set_ylim(0, h)
    ax.axis("off")
    ax.set_title(title, fontsize=12)
    return fig, ax


def layernorm_paths():
    """x reaches xhat directly, through the mean, and through the variance."""
    fig, ax = canvas(10, 4.5, "Layer norm: three paths from x to xhat, three terms in dx")
    box(ax, 1, 2.2, "x (..., C)")
    box(ax, 3.5, 3.6, "mean", color="#f5e6dd")
    box(ax, 3.5, 2.2, "xc = x - mean")
    box(ax, 5.8, 0.8, "var = mean(xc²)", w=2.0, color="#f5e6dd")
    box(ax, 7.6, 0.8, "rstd", w=1.0, color="#f5e6dd")
    box(ax, 7.6, 2.2, "xhat = xc·rstd", w=1.8)
    box(ax, 9.3, 2.2, "out", w=1.0)
    arrow(ax, (1.8, 2.2), (2.7, 2.2), "tab:blue", "1: direct")
    arrow(ax, (1.6, 2.5), (2.7, 3.5), "tab:orange", "2: mean")
    arrow(ax, (3.5, 3.3), (3.5, 2.5), "tab:orange")
    arrow(ax, (4.3, 2.2), (6.7, 2.2), "tab:blue")
    arrow(ax, (3.8, 1.9), (4.8, 0.9), "tab:green", "3: variance")
    arrow(ax, (6.8, 0.8), (7.1, 0.8), "tab:green")
    arrow(ax, (7.6, 1.1), (7.6, 1.9), "tab:green")
    arrow(ax, (8.5, 2.2), (8.8, 2.2))
    ax.text(5, 4.25, "dx = rstd · ( g  −  mean(g)  −  xhat · mean(g · xhat) ),   g = dout · w",
            ha="center", fontsize=11)
    ax.text(5, 3.95, "term 1 (blue)      term 2 (orange)       term 3 (green)", ha="center", fontsize=9)
    return fig


def head_split():
    """(B, T, C) -> (B, nh, T, hs) and back, drawn for one batch row, C = 8, nh = 2."""
    T, nh, hs = 4, 2, 4
    colors = ["#9ecae1", "#fdae6b"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), gridspec_kw={"width_ratios": [2, 0.5, 2]})
    ax = axes[0]
    for t in range(T):
        for c in range(nh * hs):
            ax.add_patch(Rectangle((c, T - 1 - t), 1, 1, facecolor=colors[c // hs], edgecolor="black"))
    ax.set_xlim(0, nh * hs)
    ax.set_ylim(0, T)
    ax.set_aspect("equal")
    ax.set_xticks(np.arange(nh * hs) + 0.5, [f"c{c}" for c in range(nh * hs)], fontsize=8)
    ax.set_yticks(np.arange(T) + 0.5, [f"t{t}" for t in reversed(range(T))], fontsize=8)
    ax.set_title("y (B, T, C): one row of C per position\nheads side by side", fontsize=10)
    mid = axes[1]
    mid.axis("off")
    mid.annotate("", xy=(1, 0.62), xytext=(0, 0.62), arrowprops=dict(arrowstyle="-|>", lw=2))
    mid.annotate("", xy=(0, 0.38), xytext=(1, 0.38), arrowprops=dict(arrowstyle="-|>", lw=2))
    mid.text(0.5, 0.72, "split_heads\nreshape (B,T,nh,hs)\ntranspose(0,2,1,3)", ha="center", fontsize=8)
    mid.text(0.5, 0.12, "merge_heads\ntranspose(0,2,1,3)\nreshape (B,T,C)", ha="center", fontsize=8)
    ax = axes[2]
    for h in range(nh):
        x0 = h * (hs + 1)
        for t in range(T):
            for c in range(hs):
                ax.add_patch(Rectangle((x0 + c, T - 1 - t), 1, 1, facecolor=colors[h], edgecolor="black"))
        ax.text(x0 + hs / 2, T + 0.3, f"head {h}: (T, hs)", ha="center", fontsize=9)
    ax.set_xlim(0, nh * (hs + 1) - 1)
    ax.set_ylim(0, T + 0.8)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("(B, nh, T, hs): each head a (T, hs) matrix\nattention runs per head", fontsize=10)
    fig.tight_layout()
    return fig


def causal_mask():
    """Allowed (query t, key s <= t) entries of a T x T score matrix."""
    T = 8
    allowed = np.tril(np.ones((T, T)))
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.imshow(allowed, cmap="Blues", vmin=-0.3, vmax=1.3)
    for t in range(T):
        for s in range(T):
            ax.text(s, t, "P" if s <= t else "0", ha="center", va="center", fontsize=9,
                    color="white" if s <= t else "gray")
    ax.set_xticks(range(T), [f"{s}" for s in range(T)])
    ax.set_yticks(range(T), [f"{t}" for t in range(T)])
    ax.set_xlabel("key s (the position looked at)")
    ax.set_ylabel("query t (the position looking)")
    ax.set_title("Causal mask over T×T scores: s > t set to −inf,\nso P[t, s] = 0 and dS[t, s] = 0", fontsize=10)
    return fig


def residual_stream():
    """A pre-LN block: the stream x passes straight up; each branch reads a normalized copy and adds."""
    fig, ax = canvas(8, 6.5, "The residual stream of a pre-LN block")
    ax.plot([2, 2], [0.4, 6.0], color="tab:blue", lw=4)
    ax.text(1.85, 0.3, "x in", ha="right", fontsize=10)
    ax.text(1.85, 6.0, "x out", ha="right", fontsize=10)
    for y0, parts, name in ((1.2, ["ln_1", "attn.c_attn → attention → attn.c_proj", "dropout"], "attention"),
                            (3.6, ["ln_2", "mlp.c_fc → gelu → mlp.c_proj", "dropout"], "MLP")):
        arrow(ax, (2, y0), (3.6, y0 + 0.0), "gray")
        for i, text in enumerate(parts):
            box(ax, 5.3, y0 + 0.55 * i, text, w=3.4, h=0.45, color="#f5e6dd" if i == 0 else "#dde8f5")
        arrow(ax, (7.0, y0 + 1.1), (2.1, y0 + 1.6), "gray", rad=0.25)
        ax.text(2.3, y0 + 1.62, "+", fontsize=16, color="tab:blue")
        ax.text(7.4, y0 + 0.55, name, fontsize=10, rotation=90, va="center")
    ax.set_ylim(-0.9, 6.5)
    ax.text(4, -0.7, "forward: x = x + branch(ln(x));  backward: dx passes the stream unchanged,\n"
            "each branch adds its part (dx += dh)", fontsize=9, ha="center")
    return fig


FIGURES = {
    "layernorm_paths.png": layernorm_paths,
    "head_split_merge.png": head_split,
    "causal_mask.png": causal_mask,
    "residual_stream.png": residual_stream,
}


def main():
    OUT.mkdir(exist_ok=True)
    for name, draw in FIGURES.items():
        fig = draw()
        fig.savefig(OUT / name, dpi=110, bbox_inches="tight", metadata={"Software": None})
        plt.close(fig)
        print(f"wrote docs/figures/{name}")


if __name__ == "__main__":
    main()
