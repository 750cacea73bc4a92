"""`npgpt attention`: draw every head's attention weights of a trained model over a text.

    npgpt attention --ckpt out --text "ROMEO: But soft" --out attn.png

One panel per (layer, head): row t is how query position t spreads its
attention over the keys 0..t (the causal mask leaves the upper triangle
empty).  The weights come from `model.attention_maps(idx)`.  Drawing needs
matplotlib, an optional extra: pip install "npgpt[plot]".
"""
import sys

from .errors import UserError

INSTALL_HINT = "npgpt attention needs matplotlib to draw; install it with: pip install 'npgpt[plot]'"
MAX_LABELLED_TOKENS = 40  # beyond this the token labels would overlap


def add_arguments(parser):
    parser.add_argument("--ckpt", default="out", help="training output directory (default: out)")
    parser.add_argument("--text", required=True, help="text whose attention to draw (at most block_size tokens are used: the last ones)")
    parser.add_argument("--out", default="attn.png", help="image file to write (default: attn.png; .png, .pdf, .svg)")


def import_pyplot():
    """matplotlib.pyplot on a file-only backend, or a UserError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    matplotlib.use("Agg")  # no window: the figure goes to a file
    import matplotlib.pyplot as plt

    return plt


def draw(maps, labels, path, plt):
    """maps (n_layer, nh, T, T) -> one figure with a panel per head, saved to path."""
    n_layer, n_head, T, _ = maps.shape
    size = 1.0 + min(T, 64) * 0.06
    fig, axes = plt.subplots(n_layer, n_head, figsize=(n_head * size, n_layer * size), squeeze=False)
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer][head]
            ax.imshow(maps[layer, head], cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            if labels is not None:
                ax.set_xticks(range(T), labels, fontsize=5, rotation=90)
                ax.set_yticks(range(T), labels, fontsize=5)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.supxlabel("key position (attended to)")
    fig.supylabel("query position")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def run(args):
    from .checkpoint import load_model

    plt = import_pyplot()
    model, tokenizer, _ = load_model(args.ckpt, backend="numpy")
    if args.text == "":
        raise UserError("--text is empty; give at least one character")
    try:
        ids = tokenizer.encode(args.text)
    except ValueError as e:
        raise UserError(f"--text cannot be encoded: {e}") from None
    block_size = model.config.block_size
    if len(ids) > block_size:
        print(f"npgpt: note: --text has {len(ids)} tokens; drawing its last {block_size} (the model's block_size)",
              file=sys.stderr)
        ids = ids[-block_size:]
    maps = model.attention_maps(ids)  # (n_layer, nh, T, T)
    labels = [repr(tokenizer.decode([i]))[1:-1] for i in ids] if len(ids) <= MAX_LABELLED_TOKENS else None
    draw(maps, labels, args.out, plt)
    print(f"wrote {args.out}: {maps.shape[0]} layers x {maps.shape[1]} heads over {len(ids)} tokens")
    return 0
