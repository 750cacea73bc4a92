"""`npgpt plot OUT`: figures of a training run, and OUT/report.html that shows them.

    npgpt plot out            # -> out/plots/*.png and out/report.html (opens from disk, no server)

Reads OUT/metrics.jsonl (and any other *.jsonl in OUT), one JSON record a
line, and sorts each record by its "kind":

  header   {"kind": "header", "config": {...}, "versions": {...}, "machine": {"cpu", "cores", ...}, "git": ...}
           the run's settings, shown in the report (npgpt train writes it to OUT/steps.jsonl)
  step     {"kind": "step", "iter" (or "step"), "tokens", "train_loss" (or "loss"), "lr", "grad_norm",
            "clipped", "ms_per_step", "tokens_per_sec", "mfu"}   every --log-interval (OUT/steps.jsonl)
  eval     {"kind": "eval" or no kind, "iter", "val_loss", "train_loss", "lr", "grad_norm", ...}
           every --eval-interval (the records npgpt train has always written)
  stats    {"kind": "stats", "iter", "params": {name: {"weight_rms", "grad_rms", "update_ratio"}},
            "layers": {"h.i": {"resid_mean", "resid_std", "gelu_beyond_3", "attn_entropy": [...]}}}
           every --stats-interval (npgpt/observe.py; OUT/steps.jsonl)

Any kind may be missing: a figure whose records are absent is not drawn,
and a run with eval records only still gets its loss, lr and gradient norm.
Records of unknown kinds are ignored.  matplotlib is an optional extra
(`pip install 'npgpt[plot]'`).  `npgpt train --plot` refreshes the
figures after evaluations through `Refresher` (in the background, at most
every 30 s); `refresh(out)` does it at once.
"""
import base64
import glob
import html
import io
import math
import os
import re
import threading
import time

from . import safeload
from .errors import UserError

INSTALL_HINT = "npgpt plot needs matplotlib: pip install 'npgpt[plot]'"
MAX_LOG_BYTES = 512 * 1024 * 1024
PLOTS_DIR = "plots"
UPDATE_RATIO_REFERENCE = -3.0  # log10 of 1e-3: updates about a thousandth of the weights' scale
MATRIX_KINDS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def require_matplotlib():
    """Raise the one-line install hint unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None


# ------------------------------------------------------------------ records
def read_jsonl(path):
    """-> the list of records of one JSONL file.

    A last line without its newline is a record still being written (a
    running `npgpt train --plot`) and is skipped; any other line that is not a
    JSON object is an error naming the file and the line.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LOG_BYTES + 1)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_LOG_BYTES:
        raise UserError(f"{path}: larger than {MAX_LOG_BYTES} bytes, refused")
    lines = data.split(b"\n")
    complete = lines[:-1]  # after the last newline: nothing, or a partial record
    records = []
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        record = safeload.parse_json(line, f"{path} line {number}")
        if not isinstance(record, dict):
            raise UserError(f"{path} line {number}: a record must be a JSON object")
        records.append(record)
    return records


def _number(value):
    """A finite float, or None for anything else (missing, null, a string...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _dict(value):
    """value if it is a JSON object, else an empty one: a malformed part of a record draws nothing."""
    return value if isinstance(value, dict) else {}


def _first(record, *keys):
    for key in keys:
        if key in record:
            return record[key]
    return None


def load_run(out_dir):
    """OUT -> {"header": dict or None, "steps": [...], "evals": [...], "stats": [...]}, each sorted by step."""
    if not os.path.isdir(out_dir):
        raise UserError(f"{out_dir}: no such run directory")
    metrics = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.isfile(metrics):
        raise UserError(f"{out_dir} holds no metrics.jsonl: is it the --out directory of npgpt train?")
    paths = [metrics] + sorted(p for p in glob.glob(os.path.join(out_dir, "*.jsonl")) if p != metrics)
    run = {"header": None, "steps": [], "evals": [], "stats": []}
    for path in paths:
        for record in read_jsonl(path):
            kind = record.get("kind")
            if kind == "header":
                run["header"] = record  # the latest header wins (a resumed run writes another)
            elif kind == "step":
                step = _number(_first(record, "step", "iter"))
                if step is not None:
                    run["steps"].append({**record, "step": step,
                                         "train_loss": _number(_first(record, "train_loss", "loss"))})
            elif kind == "stats":
                if _number(record.get("iter")) is not None:
                    run["stats"].append(record)
            elif kind in (None, "eval") and "val_loss" in record and _number(record.get("iter")) is not None:
                run["evals"].append(record)
    for key, step_key in (("steps", "step"), ("evals", "iter"), ("stats", "iter")):
        # one record per step, the last one written: a run resumed from an earlier checkpoint
        # repeats the steps after it, and the repeat is what the model went on from
        latest = {r[step_key]: r for r in run[key]}
        run[key] = [latest[step] for step in sorted(latest)]
    return run


def tokens_per_step(run):
    """Tokens per optimizer step, from the header's config or the step records; None if unknown."""
    config = _dict(_dict(run["header"]).get("config"))
    sizes = [_number(config.get(k)) for k in ("batch_size", "block_size")]
    if all(sizes):
        return sizes[0] * sizes[1] * (_number(config.get("grad_accum")) or 1.0)
    for r in run["steps"]:
        tokens = _number(_first(r, "tokens", "tokens_seen"))
        if tokens and r["step"] > 0:
            return tokens / r["step"]
    return None


def _series(records, x_key, y_key):
    """-> (xs, ys) of the records whose y is a finite number."""
    xs, ys = [], []
    for r in records:
        x, y = _number(r.get(x_key)), _number(r.get(y_key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


# ------------------------------------------------------------------ figures
def build_figures(run):
    """A loaded run -> {name: matplotlib Figure}, only those its records allow.

    Figures are built without pyplot (no global state, no display), so a
    training thread can call this safely.
    """
    from matplotlib.figure import Figure

    figures = {}
    train_records, train_x = (run["steps"], "step") if run["steps"] else (run["evals"], "iter")
    if run["evals"] or run["steps"]:
        fig = Figure(figsize=(11, 4), layout="constrained")
        per_step = tokens_per_step(run)
        axes = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
        for ax, scale, label in zip(axes, (1.0, per_step), ("step", "tokens")):
            if scale is None:
                ax.text(0.5, 0.5, "tokens per step unknown\n(no header or step records)", ha="center",
                        va="center", transform=ax.transAxes)
                ax.set_xlabel("tokens")
                continue
            xs, ys = _series(train_records, train_x, "train_loss")
            ax.plot([x * scale for x in xs], ys, label="train", color="tab:blue", alpha=0.8)
            xs, ys = _series(run["evals"], "iter", "val_loss")
            ax.plot([x * scale for x in xs], ys, label="val", color="tab:orange", marker="o", markersize=3)
            ax.set_xlabel(label)
            ax.set_ylabel("loss (nats per token)")
            ax.legend()
            ax.grid(alpha=0.3)
        fig.suptitle("loss")
        figures["loss"] = fig

        fig = Figure(figsize=(7, 3.5), layout="constrained")
        ax = fig.add_subplot()
        xs, ys = _series(train_records, train_x, "lr")
        ax.plot(xs, ys, label="lr", color="tab:green")
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.grid(alpha=0.3)
        fig.suptitle("learning rate")
        figures["lr"] = fig

        figures["grad_norm"] = _grad_norm_figure(run, train_records, train_x)
    if run["stats"]:
        figures["update_ratio"] = _update_ratio_figure(run["stats"])
        figures["activations"] = _activation_figure(run["stats"])
    return figures


def _grad_norm_figure(run, records, x_key):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    xs, ys = _series(records, x_key, "grad_norm")
    ax.plot(xs, ys, label="gradient norm (before clipping)", color="tab:purple")
    clip = _number(_dict(_dict(run["header"]).get("config")).get("grad_clip"))
    clipped = []
    for r in records:
        x, y = _number(r.get(x_key)), _number(r.get("grad_norm"))
        # a step record says whether it clipped; an eval record's norm is compared with the threshold
        was_clipped = r["clipped"] if isinstance(r.get("clipped"), bool) else bool(clip and y and y > clip)
        if x is not None and y is not None and was_clipped:
            clipped.append((x, y))
    if clipped:
        ax.plot(*zip(*clipped), linestyle="none", marker="x", color="tab:red", label="clipped")
    if clip:
        ax.axhline(clip, color="tab:red", linestyle=":", linewidth=1, label=f"clip threshold {clip:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("global L2 norm")
    ax.set_yscale("log" if ys and min(ys) > 0 else "linear")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.suptitle("gradient norm")
    return fig


def _layer_of(name):
    """'h.3.mlp.c_fc.weight' -> (3, 'mlp.c_fc.weight'); other names -> (None, name)."""
    m = re.match(r"h\.(\d+)\.(.+)$", name)
    return (int(m.group(1)), m.group(2)) if m else (None, name)


def _update_ratio_figure(stats):
    """One panel per kind of weight matrix, one line per layer, and the -3 reference line."""
    from matplotlib.figure import Figure

    names = sorted({n for r in stats for n in _dict(r.get("params"))}, key=lambda n: (_layer_of(n)[0] or -1, n))
    panels = [(kind, [n for n in names if _layer_of(n)[1] == kind]) for kind in MATRIX_KINDS]
    panels.append(("embeddings", [n for n in names if n in ("wte.weight", "wpe.weight")]))
    panels = [(title, members) for title, members in panels if members]
    fig = Figure(figsize=(11, 3.2 * math.ceil(len(panels) / 2)), layout="constrained")
    for k, (title, members) in enumerate(panels):
        ax = fig.add_subplot(math.ceil(len(panels) / 2), 2, k + 1)
        for n in members:
            xs, ys = [], []
            for r in stats:
                y = _number(_dict(_dict(r.get("params")).get(n)).get("update_ratio"))
                if y is not None:
                    xs.append(r["iter"])
                    ys.append(y)
            layer = _layer_of(n)[0]
            ax.plot(xs, ys, label=f"layer {layer}" if layer is not None else n.removesuffix(".weight"))
        ax.axhline(UPDATE_RATIO_REFERENCE, color="black", linestyle="--", linewidth=1, label="-3")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("log10 update:data")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("update:data ratio, log10(std(update) / std(weights))")
    return fig


def _activation_figure(stats):
    """Residual-stream mean and std, GELU saturation, attention entropy: one line per layer each."""
    from matplotlib.figure import Figure

    layers = sorted({n for r in stats for n in _dict(r.get("layers"))}, key=lambda n: _layer_of(n + ".x")[0] or 0)
    fig = Figure(figsize=(11, 6.4), layout="constrained")
    panels = [("resid_mean", "residual stream mean", "mean"), ("resid_std", "residual stream std", "std"),
              ("gelu_beyond_3", "GELU inputs beyond ±3", "% of inputs"),
              ("attn_entropy", "attention entropy", "nats, mean over heads")]
    for k, (key, title, unit) in enumerate(panels):
        ax = fig.add_subplot(2, 2, k + 1)
        for layer in layers:
            xs, ys, lows = [], [], []
            for r in stats:
                value = _dict(_dict(r.get("layers")).get(layer)).get(key)
                if key == "attn_entropy":
                    heads = [h for h in (value or []) if _number(h) is not None] if isinstance(value, list) else []
                    if heads:
                        xs.append(r["iter"])
                        ys.append(sum(heads) / len(heads))
                        lows.append(min(heads))
                elif _number(value) is not None:
                    xs.append(r["iter"])
                    ys.append(100 * value if key == "gelu_beyond_3" else value)
            line, = ax.plot(xs, ys, label=f"layer {layer.removeprefix('h.')}")
            if lows:
                ax.plot(xs, lows, linestyle=":", color=line.get_color(), label="_lowest head")
        if key == "attn_entropy":
            ax.plot([], [], linestyle=":", color="gray", label="lowest head")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(unit)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("activations")
    return fig


# ------------------------------------------------------------------ files
def _atomic_write(path, data):
    """Write bytes so that a reader (a browser refreshing the report) never sees half a file.

    The temporary file is opened with mode 0666 so the umask decides, as for
    any file the user creates (mkstemp's 0600 would hide the report from
    other users).
    """
    tmp = os.path.join(os.path.dirname(path) or ".",
                       f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def png_bytes(fig, dpi=100):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def report_html(run, images):
    """The run's settings and its figures (PNG bytes, embedded as base64): one self-contained page."""
    header = _dict(run["header"])
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>npgpt run report</title>",
             "<style>body{font-family:sans-serif;max-width:1150px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}img{max-width:100%}</style>",
             "</head><body>", "<h1>npgpt run report</h1>"]
    if run["evals"]:
        last = run["evals"][-1]
        best = min((r["val_loss"] for r in run["evals"] if _number(r.get("val_loss")) is not None), default=None)
        parts.append(f"<p>last evaluation: step {int(last['iter'])}, val loss {_fmt(last.get('val_loss'))}"
                     f" (best {_fmt(best)})</p>")
    if not header:
        parts.append("<p>No header record in the run's logs: its settings are unknown.</p>")
    for title, table in (("settings", header.get("config")), ("versions", header.get("versions"))):
        if isinstance(table, dict) and table:
            rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                           for k, v in table.items())
            parts.append(f"<h2>{title}</h2><table>{rows}</table>")
    # npgpt train's step-log header (steps.jsonl) nests the machine under "machine"; older logs had it at the top
    machine = {**_dict(header.get("machine")), **{k: header[k] for k in ("cpu", "threads", "git") if k in header}}
    if machine:
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in machine.items())
        parts.append(f"<h2>machine</h2><table>{rows}</table>")
    for name, data in images.items():
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(f"<h2>{html.escape(name.replace('_', ' '))}</h2>"
                     f"<img alt='{html.escape(name)}' src='data:image/png;base64,{encoded}'>")
    if not run["stats"]:
        parts.append("<p>No statistics records: train with --stats-interval N for the update:data ratios and "
                     "activation statistics.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def refresh(out_dir):
    """Read OUT's records and (re)write OUT/plots/*.png and OUT/report.html -> the paths written."""
    require_matplotlib()
    run = load_run(out_dir)
    figures = build_figures(run)
    plots = os.path.join(out_dir, PLOTS_DIR)
    os.makedirs(plots, exist_ok=True)
    written, images = [], {}
    for name, fig in figures.items():
        images[name] = png_bytes(fig)
        path = os.path.join(plots, name + ".png")
        _atomic_write(path, images[name])
        written.append(path)
    report = os.path.join(out_dir, "report.html")
    _atomic_write(report, report_html(run, images).encode("utf-8"))
    written.append(report)
    return written


class Refresher:
    """`npgpt train --plot`: refresh OUT's figures after evaluations without holding the training up.

    Drawing the five figures takes seconds of CPU (most of it matplotlib's
    text layout), as long as a few hundred training steps of config S.  So
    request() starts a refresh in a background thread only when none is
    running and min_interval seconds have passed since the last one began;
    otherwise it notes that the figures are stale.  close() waits for a
    running refresh and draws the final figures if any request is pending.

        plotter = Refresher(cfg.out)     # raises the install hint at once if matplotlib is missing
        plotter.request()                # after each evaluation
        plotter.close()                  # at the end of training
    """

    def __init__(self, out_dir, min_interval=30.0):
        require_matplotlib()
        self.out_dir, self.min_interval = out_dir, float(min_interval)
        self.error = None  # the last background refresh's failure, as one line
        self._thread = None
        self._started = -math.inf
        self._pending = False

    def request(self):
        now = time.monotonic()
        if (self._thread is not None and self._thread.is_alive()) or now - self._started < self.min_interval:
            self._pending = True
            return False
        self._pending = False
        self._started = now
        self._thread = threading.Thread(target=self._run, name="npgpt-plot", daemon=True)
        self._thread.start()
        return True

    def _run(self):
        try:
            refresh(self.out_dir)
        except Exception as e:  # a figure must never stop a training run
            self.error = f"npgpt plot: {e}"

    def close(self):
        """Wait for a running refresh; draw the last figures if a request is pending -> paths or None."""
        if self._thread is not None:
            self._thread.join()
        if self._pending:
            self._pending = False
            return refresh(self.out_dir)
        return None


# ------------------------------------------------------------------ the command
def add_arguments(parser):
    parser.add_argument("out", metavar="OUT", help="the --out directory of a npgpt train run (holds metrics.jsonl)")


def run(args):
    for path in refresh(args.out):
        print(path)
    return 0
