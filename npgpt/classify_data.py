"""Labelled texts for classification: reading, label ids, splits, padded batches, metrics.

    examples = read_examples("train.csv", text_column="text", label_column="label")
    labels = LabelMap.from_examples(examples)          # sorted names -> ids 0..K-1
    train, val = split_examples(examples, 0.1, seed=0)  # a seeded, stratified split
    ids, lengths = pad_batch([tok.encode(t) for t in texts], block_size)
    report = classification_report(y_true, y_pred, labels.names)

A file is CSV with a header row (the text and label columns named by the
caller) or JSON Lines (one object per line with those two fields); the file
extension decides (.csv / .tsv / .jsonl / .json).  Labels are strings; a
numeric label column is read as its text ("0", "1").
"""
import csv
import io
import os
from dataclasses import dataclass

import numpy as np

from . import safeload
from .errors import UserError

MAX_LINE_BYTES = 10 * 1024 * 1024  # one CSV field or JSON line; csv's own default is 128 KB


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    line: int  # where it came from in its file, for error messages


# ------------------------------------------------------------------ reading
def _read_utf8(path):
    if not os.path.exists(path):
        raise UserError(f"data file not found: {path}")
    if not os.path.isfile(path):
        raise UserError(f"data path is not a regular file: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise UserError(f"data file is empty: {path}")
    if b"\x00" in raw:
        raise UserError(f"data file looks binary (it contains NUL bytes): {path}")
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark from a spreadsheet export is fine
    except UnicodeDecodeError as e:
        raise UserError(f"data file is not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at offset {e.start}): {path}") from None


def read_examples(path, text_column="text", label_column="label"):
    """A CSV (with header) or JSONL file -> [Example]; UserError naming the file and line on bad input."""
    text = _read_utf8(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".json", ".ndjson"):
        examples = _read_jsonl(text, path, text_column, label_column)
    else:
        examples = _read_csv(text, path, text_column, label_column, "\t" if ext == ".tsv" else ",")
    if not examples:
        raise UserError(f"{path} holds no examples")
    return examples


def _check_fields(text, label, path, line):
    if not text.strip():
        raise UserError(f"{path}, line {line}: the text is empty")
    if not label.strip():
        raise UserError(f"{path}, line {line}: the label is empty")
    return Example(text, label.strip(), line)


def _read_csv(text, path, text_column, label_column, delimiter):
    csv.field_size_limit(MAX_LINE_BYTES)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except csv.Error as e:
        raise UserError(f"{path}: not valid CSV ({e})") from None
    header = [h.strip() for h in header]
    for column, flag in ((text_column, "text"), (label_column, "label")):
        if column not in header:
            raise UserError(f"{path}: no {flag} column named {column!r} (the header has: {', '.join(map(repr, header))})")
    ti, li = header.index(text_column), header.index(label_column)
    examples = []
    try:
        for row in reader:
            line = reader.line_num
            if not row or not any(cell.strip() for cell in row):
                continue  # blank lines between records
            if len(row) != len(header):
                raise UserError(f"{path}, line {line}: {len(row)} fields where the header has {len(header)}")
            examples.append(_check_fields(row[ti], row[li], path, line))
    except csv.Error as e:
        raise UserError(f"{path}, line {reader.line_num}: not valid CSV ({e})") from None
    return examples


def _read_jsonl(text, path, text_column, label_column):
    examples = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            raise UserError(f"{path}, line {line}: longer than {MAX_LINE_BYTES:,} characters")
        record = safeload.parse_json(raw, f"{path}, line {line}")  # bounded depth, no NaN: one line on failure
        if not isinstance(record, dict):
            raise UserError(f"{path}, line {line}: not a JSON object")
        for column in (text_column, label_column):
            if column not in record:
                raise UserError(f"{path}, line {line}: no field {column!r}")
        value, label = record[text_column], record[label_column]
        if not isinstance(value, str):
            raise UserError(f"{path}, line {line}: field {text_column!r} must be a string")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise UserError(f"{path}, line {line}: field {label_column!r} must be a string or an integer")
        examples.append(_check_fields(value, str(label), path, line))
    return examples


# ------------------------------------------------------------------ labels
@dataclass(frozen=True)
class LabelMap:
    """Label names <-> ids 0..K-1; saved with a checkpoint so predictions come back as names."""

    names: tuple

    @classmethod
    def from_examples(cls, examples, where="the training data"):
        names = tuple(sorted({e.label for e in examples}))
        if len(names) < 2:
            raise UserError(f"{where} has only one class ({names[0]!r}): a classifier needs at least two")
        return cls(names)

    def ids(self, examples, where):
        """[Example] -> (N,) int64 label ids; UserError for a label training never saw."""
        index = {name: i for i, name in enumerate(self.names)}
        unknown = sorted({e.label for e in examples} - index.keys())
        if unknown:
            raise UserError(f"{where} has label(s) {', '.join(map(repr, unknown[:5]))} that the model was not "
                            f"trained on (it knows {', '.join(map(repr, self.names))})")
        return np.array([index[e.label] for e in examples], dtype=np.int64)

    def to_dict(self):
        return {"names": list(self.names)}

    @classmethod
    def from_dict(cls, d):
        return cls(tuple(d["names"]))


def class_counts(examples, names):
    """-> [(name, count)] in the label map's order."""
    counts = {name: 0 for name in names}
    for e in examples:
        counts[e.label] = counts.get(e.label, 0) + 1
    return list(counts.items())


def split_examples(examples, fraction, seed):
    """-> (kept, held_out): a seeded split holding out `fraction` of each class (at least one if it has 2+)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    by_label = {}
    for i, e in enumerate(examples):
        by_label.setdefault(e.label, []).append(i)
    held = []
    for label in sorted(by_label):
        members = np.array(by_label[label])
        n = int(round(fraction * len(members)))
        n = min(max(n, 1 if len(members) > 1 else 0), len(members) - 1)
        held += rng.choice(members, size=n, replace=False).tolist()
    held_set = set(held)
    kept = [e for i, e in enumerate(examples) if i not in held_set]
    return kept, [examples[i] for i in sorted(held_set)]


# ------------------------------------------------------------------ batches
def truncate(ids, block_size):
    """Keep a text's FIRST block_size tokens (Hugging Face's default side); the rest is dropped."""
    return ids[:block_size]


def pad_batch(token_lists, block_size, pad_id=0):
    """[[ids]] -> (idx (B, T) int64 right-padded with pad_id, lengths (B,)), T = the longest after truncation.

    pad_id only fills the padding, which the pooled position never reads
    (causal mask); the lengths, not the pad id, say where each text ends.
    """
    cut = [truncate(list(ids), block_size) for ids in token_lists]
    if any(len(ids) == 0 for ids in cut):
        raise ValueError("a text encodes to no tokens")
    lengths = np.array([len(ids) for ids in cut], dtype=np.int64)
    idx = np.full((len(cut), int(lengths.max())), pad_id, dtype=np.int64)
    for row, ids in enumerate(cut):
        idx[row, : len(ids)] = ids
    return idx, lengths


# ------------------------------------------------------------------ metrics
def confusion_matrix(y_true, y_pred, num_labels):
    """-> (K, K) int64: row = true label, column = predicted label."""
    m = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def classification_report(y_true, y_pred, names):
    """Accuracy, macro-F1, per-class precision/recall/F1/support, the confusion matrix and the
    majority-class baseline (the accuracy of always predicting the most frequent true label).

    A class that is never predicted has precision 0 (not NaN), a class with
    no true examples has recall 0: the macro average then counts it as 0.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    K = len(names)
    m = confusion_matrix(y_true, y_pred, K)
    tp = np.diag(m).astype(np.float64)
    predicted, actual = m.sum(axis=0), m.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(K), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(K), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(K), where=(precision + recall) > 0)
    n = len(y_true)
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1.mean()),
        "majority_baseline": float(actual.max() / n) if n else 0.0,
        "majority_label": names[int(actual.argmax())],
        "per_class": {name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                             "support": int(actual[k])} for k, name in enumerate(names)},
        "confusion": m.tolist(),
        "labels": list(names),
    }


def format_report(report):
    """The report as the text `npgpt classify eval` prints."""
    names = report["labels"]
    width = max(12, *(len(n) for n in names))
    lines = [f"examples {report['n']}: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} "
             f"(majority-class baseline {report['majority_baseline']:.4f}, always {report['majority_label']!r})",
             "", f"{'label':<{width}}  precision  recall     f1  support"]
    for name in names:
        c = report["per_class"][name]
        lines.append(f"{name:<{width}}  {c['precision']:>9.4f}  {c['recall']:>6.4f}  {c['f1']:>5.4f}  {c['support']:>7}")
    lines += ["", "confusion matrix (rows: true label, columns: predicted)",
              " " * width + "  " + "  ".join(f"{n[:8]:>8}" for n in names)]
    for name, row in zip(names, report["confusion"]):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{v:>8}" for v in row))
    return "\n".join(lines)
