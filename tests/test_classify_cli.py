"""`npgpt classify train | eval | predict` end to end, checkpoints, exact resume, bad input (one line each)."""
import csv
import json
import os

import numpy as np
import pytest

from npgpt import checkpoint
from npgpt.cli import main
from npgpt.classify_task import BUNDLED, load_classifier, predict_texts

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "48", "--batch-size", "8",
        "--backend", "numpy", "--no-progress", "--log-interval", "0"]


def train(tmp_path, *extra, out="out", iters=12):
    argv = ["classify", "train", "--out", str(tmp_path / out), "--max-iters", str(iters), "--eval-interval", "4",
            "--lr", "3e-3", "--warmup-iters", "2", *TINY, *extra]
    return main(argv)


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def bundled_rows():
    with open(BUNDLED, encoding="utf-8", newline="") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)]


def test_bundled_set_is_balanced_and_small():
    rows = bundled_rows()
    assert 30 <= len(rows) <= 60
    assert sorted({label for _, label in rows}) == ["neg", "pos"]
    assert sum(label == "pos" for _, label in rows) == len(rows) // 2


def test_train_eval_predict_end_to_end(tmp_path, capsys):
    assert train(tmp_path) == 0
    out = capsys.readouterr().out
    assert "(neg 18, pos 18)" in out and "validation (neg 2, pos 2)" in out  # class counts at the start
    records = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert [r["iter"] for r in records] == [0, 4, 8, 12]
    assert all(0 <= r["val_accuracy"] <= 1 and 0 <= r["val_macro_f1"] <= 1 for r in records)

    assert main(["classify", "eval", "--ckpt", str(tmp_path / "out"), "--data", BUNDLED]) == 0
    report = capsys.readouterr().out
    assert report.startswith("examples 40: accuracy ")
    assert "majority-class baseline 0.5000" in report and "confusion matrix" in report

    assert main(["classify", "predict", "--ckpt", str(tmp_path / "out"), "--text", "a lovely film",
                 "--text", "a dull film"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, text in zip(lines, ["a lovely film", "a dull film"]):
        label, probs, shown = line.split("\t")
        assert label in ("neg", "pos") and shown == text
        p = dict(part.split() for part in probs.strip("()").split(", "))
        assert abs(sum(map(float, p.values())) - 1) < 1e-3
        assert label == max(p, key=lambda k: float(p[k]))

    preds = tmp_path / "preds.csv"
    assert main(["classify", "predict", "--ckpt", str(tmp_path / "out"), "--data", BUNDLED, "--out", str(preds)]) == 0
    with open(preds, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == [t for t, _ in bundled_rows()]
    assert {r["predicted"] for r in rows} <= {"neg", "pos"}
    assert all(abs(float(r["p_neg"]) + float(r["p_pos"]) - 1) < 1e-5 for r in rows)


def test_jsonl_with_named_columns_and_three_labels(tmp_path, capsys):
    """Labels are strings in any order: ids follow the sorted names, saved and read back."""
    names = ["zebra", "apple", "mango"]
    path = tmp_path / "train.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, (text, _) in enumerate(bundled_rows()[:36]):
            f.write(json.dumps({"review": text, "kind": names[i % 3]}) + "\n")
    assert train(tmp_path, "--data", str(path), "--text-column", "review", "--label-column", "kind") == 0
    capsys.readouterr()
    clf = load_classifier(str(tmp_path / "out"), which="latest")
    assert clf.labels.names == ("apple", "mango", "zebra")
    state = checkpoint.load(str(tmp_path / "out")).state["task"]
    assert state["labels"] == ["apple", "mango", "zebra"] and state["text_column"] == "review"
    labels, probs = predict_texts(clf, ["a lovely film"])
    assert probs.shape == (1, 3) and labels[0] == clf.labels.names[int(probs[0].argmax())]
    # eval reads the same columns by default
    assert main(["classify", "eval", "--ckpt", str(tmp_path / "out"), "--data", str(path)]) == 0
    assert "examples 36" in capsys.readouterr().out


def test_saved_classifier_computes_what_the_trained_one_did(tmp_path):
    """The label map and every weight (score.weight included) survive save and load bit for bit."""
    from npgpt.classify_task import fit

    clf = fit(out=str(tmp_path / "api"), max_iters=4, eval_interval=2, n_layer=1, n_embd=16, n_head=2,
              block_size=48, backend="numpy", log_interval=0, sample_tokens=0, verbose=False)
    again = load_classifier(str(tmp_path / "api"))
    assert again.labels == clf.labels and again.tokenizer.to_dict() == clf.tokenizer.to_dict()
    np.testing.assert_array_equal(again.flat_params, clf.flat_params)
    texts = [t for t, _ in bundled_rows()]
    np.testing.assert_array_equal(predict_texts(again, texts)[1], predict_texts(clf, texts)[1])


def test_resume_is_bit_exact(tmp_path, capsys):
    # dropout and the LM loss: every RNG and term matters; the schedule is planned for 12 in both
    common = ("--dropout", "0.1", "--lm-weight", "0.5", "--lr-decay-iters", "12")
    assert train(tmp_path, *common, out="straight", iters=12) == 0
    assert train(tmp_path, *common, out="split", iters=6) == 0
    assert main(["classify", "train", "--resume", str(tmp_path / "split"), "--max-iters", "12", "--no-progress"]) == 0
    capsys.readouterr()
    a = checkpoint.load(str(tmp_path / "straight"))
    b = checkpoint.load(str(tmp_path / "split"))
    assert a.iteration == b.iteration == 12
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
    for name in ("m", "v"):
        np.testing.assert_array_equal(a.optimizer[name], b.optimizer[name])

    def evaluations(out):  # the validation metrics at each iteration (the split run also evaluates at 6)
        rows = [json.loads(line) for line in open(tmp_path / out / "metrics.jsonl")]
        return {r["iter"]: (r["val_loss"], r["val_accuracy"], r["val_macro_f1"], r["lr"]) for r in rows}

    straight, split = evaluations("straight"), evaluations("split")
    assert set(straight) == {0, 4, 8, 12} and set(split) == {0, 4, 6, 8, 12}
    assert all(straight[i] == split[i] for i in straight)


def test_a_language_model_checkpoint_is_not_a_classifier(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "lm"), "--max-iters", "1", "--n-layer", "1", "--n-embd", "16",
                 "--n-head", "2", "--block-size", "16", "--backend", "numpy", "--sample-tokens", "0",
                 "--no-progress", "--eval-iters", "1"]) == 0
    capsys.readouterr()
    assert main(["classify", "eval", "--ckpt", str(tmp_path / "lm"), "--data", BUNDLED]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no classifier" in err


# ------------------------------------------------------------------ bad input: one line each
def _bad_files(tmp_path):
    rows = bundled_rows()
    files = {
        "missing column": (write_csv(tmp_path / "a.csv", rows, header=("review", "label")), "no text column named 'text'"),
        "empty text": (write_csv(tmp_path / "b.csv", rows[:5] + [("  ", "pos")] + rows[5:]), "line 7: the text is empty"),
        "empty label": (write_csv(tmp_path / "c.csv", rows[:3] + [("fine", "")] + rows[3:]), "line 5: the label is empty"),
        "one class": (write_csv(tmp_path / "d.csv", [r for r in rows if r[1] == "pos"]), "only one class ('pos')"),
    }
    bad = tmp_path / "e.csv"
    bad.write_bytes(b"text,label\ngood film,pos\ncaf\xe9 film,neg\n")
    files["non-UTF-8"] = (str(bad), "not UTF-8")
    ragged = tmp_path / "f.csv"
    ragged.write_text("text,label\ngood film,pos\nbad,film,neg\n", encoding="utf-8")
    files["ragged rows"] = (str(ragged), "line 3: 3 fields where the header has 2")
    return files


@pytest.mark.parametrize("case", ["missing column", "empty text", "empty label", "one class", "non-UTF-8",
                                  "ragged rows"])
def test_bad_training_data_is_one_line(tmp_path, capsys, case):
    path, message = _bad_files(tmp_path)[case]
    assert train(tmp_path, "--data", path) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("npgpt: error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err
    assert not os.path.exists(tmp_path / "out" / "checkpoint.json")


def test_eval_label_training_never_saw_is_one_line(tmp_path, capsys):
    assert train(tmp_path, iters=2) == 0
    test = write_csv(tmp_path / "test.csv", [("good", "pos"), ("meh", "neutral"), ("bad", "neg")])
    capsys.readouterr()
    assert main(["classify", "eval", "--ckpt", str(tmp_path / "out"), "--data", test]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "label(s) 'neutral' that the model was not trained on" in err
    # and the same for a validation file at training time
    assert train(tmp_path, "--val", test, "--overwrite", iters=2) == 2
    assert "'neutral'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--text", "x", "--data", BUNDLED], "either --text"),
    (["--text", " "], "text 1 is empty"),
])
def test_bad_predict_arguments_are_one_line(tmp_path, capsys, argv, message):
    assert train(tmp_path, iters=2) == 0
    capsys.readouterr()
    assert main(["classify", "predict", "--ckpt", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


# ------------------------------------------------------------------ fine-tuning options of `npgpt train`
def test_lora_trains_the_adapters_and_the_head_only(tmp_path, capsys):
    from npgpt.train import FIELDS

    if "lora_rank" not in FIELDS:
        pytest.skip("this npgpt train has no LoRA options")
    assert main(["train", "--out", str(tmp_path / "lm"), "--max-iters", "1", "--n-layer", "1", "--n-embd", "16",
                 "--n-head", "2", "--block-size", "48", "--backend", "numpy", "--sample-tokens", "0",
                 "--no-progress", "--eval-iters", "1"]) == 0
    assert train(tmp_path, "--init-from", str(tmp_path / "lm"), "--lora-rank", "2", iters=4) == 0
    capsys.readouterr()
    base = checkpoint.load(str(tmp_path / "lm"))
    tuned = checkpoint.load(str(tmp_path / "out"))
    for name, w in base.params.items():  # every base weight frozen, bit for bit
        np.testing.assert_array_equal(tuned.params[name], w, err_msg=name)
    adapters = [n for n in tuned.params if n.endswith(".lora_b")]
    assert adapters and all(np.abs(tuned.params[n]).sum() > 0 for n in adapters)  # B starts at 0: it trained
    fresh_head = np.random.default_rng(1337).normal(0.0, 0.02, tuned.params["score.weight"].shape)
    assert not np.allclose(tuned.params["score.weight"], fresh_head.astype(np.float32))  # the head trained too
    clf = load_classifier(str(tmp_path / "out"))
    assert clf.config.lora_rank == 2 and predict_texts(clf, ["fine"])[1].shape == (1, 2)


def test_a_frozen_run_resumes_bit_exactly(tmp_path, capsys):
    from npgpt.train import FIELDS

    if "freeze" not in FIELDS:
        pytest.skip("this npgpt train has no --freeze")
    assert main(["train", "--out", str(tmp_path / "lm"), "--max-iters", "1", "--n-layer", "1", "--n-embd", "16",
                 "--n-head", "2", "--block-size", "48", "--backend", "numpy", "--sample-tokens", "0",
                 "--no-progress", "--eval-iters", "1"]) == 0
    common = ("--init-from", str(tmp_path / "lm"), "--freeze", "all-but-last:0", "--lora-rank", "2",
              "--lr-decay-iters", "8", "--dropout", "0.1")
    assert train(tmp_path, *common, out="straight", iters=8) == 0
    assert train(tmp_path, *common, out="split", iters=4) == 0
    assert main(["classify", "train", "--resume", str(tmp_path / "split"), "--max-iters", "8", "--no-progress"]) == 0
    capsys.readouterr()
    a, b = checkpoint.load(str(tmp_path / "straight")), checkpoint.load(str(tmp_path / "split"))
    base = checkpoint.load(str(tmp_path / "lm"))
    np.testing.assert_array_equal(a.params["h.0.mlp.c_fc.weight"], base.params["h.0.mlp.c_fc.weight"])  # frozen
    assert not np.array_equal(a.params["ln_f.weight"], base.params["ln_f.weight"])  # trains
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
    np.testing.assert_array_equal(a.optimizer["m"], b.optimizer["m"])
