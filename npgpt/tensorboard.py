"""`npgpt train --tensorboard DIR`: the run's records as TensorBoard event files.

For people who already live in TensorBoard.  The records are the ones
npgpt writes to OUT/metrics.jsonl (kinds in npgpt/plot.py); each becomes
scalars at its step:

  step    train/loss, train/lr, train/grad_norm, train/clipped, perf/ms_per_step, perf/tokens_per_sec, perf/mfu
  eval    val/loss, val/perplexity
  stats   update_ratio/<tensor>, weight_rms/<tensor>, grad_rms/<tensor>,
          resid_mean/<layer>, resid_std/<layer>, gelu_beyond_3/<layer>, attn_entropy/<layer>/head<h>
  header  the settings as a text table

Event files are written by tensorboardX, an optional extra
(`pip install 'npgpt[tensorboard]'`); npgpt never needs TensorFlow.

    logger = TensorBoardLogger("runs/shakespeare")
    logger.log(record)          # any record; unknown kinds are ignored
    logger.close()
"""
import math

from .errors import UserError

INSTALL_HINT = "--tensorboard needs tensorboardX: pip install 'npgpt[tensorboard]'"
STEP_SCALARS = {"train_loss": "train/loss", "loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
                "ms_per_step": "perf/ms_per_step", "tokens_per_sec": "perf/tokens_per_sec", "mfu": "perf/mfu"}
EVAL_SCALARS = {"val_loss": "val/loss", "val_perplexity": "val/perplexity"}


def _finite(value):
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


class TensorBoardLogger:
    """Writes npgpt's records into a TensorBoard log directory."""

    def __init__(self, log_dir):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise UserError(INSTALL_HINT) from None
        self.writer = SummaryWriter(logdir=str(log_dir))

    def log(self, record):
        kind = record.get("kind")
        if kind == "header":
            self._header(record)
        elif kind == "step":
            self._scalars(STEP_SCALARS, record, record.get("step", record.get("iter")))
            if isinstance(record.get("clipped"), bool):
                self._scalar("train/clipped", float(record["clipped"]), record.get("step", record.get("iter")))
        elif kind == "stats":
            self._stats(record)
        elif kind in (None, "eval") and "val_loss" in record:
            self._scalars(EVAL_SCALARS, record, record.get("iter"))

    def _scalar(self, tag, value, step):
        if _finite(value) and _finite(step):
            self.writer.add_scalar(tag, float(value), int(step))

    def _scalars(self, tags, record, step):
        for key, tag in tags.items():
            if key in record:
                self._scalar(tag, record[key], step)

    def _stats(self, record):
        step = record.get("iter")
        for name, values in (record.get("params") or {}).items():
            for key in ("update_ratio", "weight_rms", "grad_rms"):
                self._scalar(f"{key}/{name}", (values or {}).get(key), step)
        for layer, values in (record.get("layers") or {}).items():
            values = values or {}
            for key in ("resid_mean", "resid_std", "gelu_beyond_3"):
                self._scalar(f"{key}/{layer}", values.get(key), step)
            for h, entropy in enumerate(values.get("attn_entropy") or []):
                self._scalar(f"attn_entropy/{layer}/head{h}", entropy, step)

    def _header(self, record):
        rows = ["| setting | value |", "|---|---|"]
        for section in ("config", "versions", "machine"):  # the step log header's sections (npgpt/train.py)
            for key, value in (record.get(section) or {}).items():
                rows.append(f"| {key} | {value} |")
        for key in ("cpu", "threads", "git"):
            if key in record:
                rows.append(f"| {key} | {record[key]} |")
        self.writer.add_text("run", "\n".join(rows), 0)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()
