"""Reading labelled texts, label ids, splits, padding and metrics (npgpt/classify_data.py)."""
import json

import numpy as np
import pytest

from npgpt import classify_data as cd
from npgpt.errors import UserError


def write(tmp_path, name, text, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def test_csv_with_quotes_commas_and_newlines(tmp_path):
    path = write(tmp_path, "d.csv", 'id,review,sentiment\n1,"Good, really good",pos\n2,"bad\nand long",neg\n\n3,ok,0\n')
    examples = cd.read_examples(path, "review", "sentiment")
    assert [(e.text, e.label) for e in examples] == [("Good, really good", "pos"), ("bad\nand long", "neg"), ("ok", "0")]


def test_jsonl(tmp_path):
    lines = [json.dumps({"text": "fine", "label": 1}), "", json.dumps({"text": "awful", "label": "neg"})]
    path = write(tmp_path, "d.jsonl", "\n".join(lines))
    assert [(e.text, e.label) for e in cd.read_examples(path)] == [("fine", "1"), ("awful", "neg")]


@pytest.mark.parametrize("name,content,message", [
    ("a.csv", "text,label\nhi,pos\n", "no label column named 'sentiment'"),
    ("b.csv", "text,sentiment\n,pos\n", "line 2: the text is empty"),
    ("c.csv", "text,sentiment\nhi,\n", "line 2: the label is empty"),
    ("d.csv", "text,sentiment\nhi,pos,extra\n", "line 2: 3 fields where the header has 2"),
    ("e.jsonl", '{"text": "x"}\n', "line 1: no field 'sentiment'"),
    ("f.jsonl", "[1, 2]\n", "line 1: not a JSON object"),
    ("g.jsonl", '{"text": 5, "sentiment": "a"}\n', "must be a string"),
    ("h.csv", "", "empty"),
    ("i.jsonl", "[" * 100000 + "\n", "line 1: nested more than 64 levels deep"),  # npgpt/safeload.py's bound
    ("j.jsonl", '{"text": "x", "sentiment": NaN}\n', "line 1: not valid JSON"),
])
def test_bad_files_get_one_line(tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cd.read_examples(path, "text", "sentiment")


def test_non_utf8_and_missing_files(tmp_path):
    with pytest.raises(UserError, match="not UTF-8"):
        cd.read_examples(write(tmp_path, "x.csv", b"text,label\n\xff\xfe,pos\n", "wb"))
    with pytest.raises(UserError, match="not found"):
        cd.read_examples(str(tmp_path / "missing.csv"))


def test_label_map_needs_two_classes_and_refuses_unseen_labels():
    examples = [cd.Example("a", "pos", 1), cd.Example("b", "pos", 2)]
    with pytest.raises(UserError, match="only one class"):
        cd.LabelMap.from_examples(examples)
    labels = cd.LabelMap.from_examples(examples + [cd.Example("c", "neg", 3)])
    assert labels.names == ("neg", "pos")
    np.testing.assert_array_equal(labels.ids(examples, "x"), [1, 1])
    with pytest.raises(UserError, match="'meh'"):
        labels.ids([cd.Example("d", "meh", 4)], "test.csv")
    assert cd.LabelMap.from_dict(json.loads(json.dumps(labels.to_dict()))) == labels


def test_split_is_seeded_stratified_and_disjoint():
    examples = [cd.Example(f"t{i}", "a" if i % 4 else "b", i) for i in range(40)]
    kept, held = cd.split_examples(examples, 0.25, seed=3)
    assert len(kept) + len(held) == 40 and not {e.line for e in kept} & {e.line for e in held}
    assert sorted(e.label for e in held).count("b") == round(0.25 * 10)
    assert cd.split_examples(examples, 0.25, seed=3) == (kept, held)
    assert cd.split_examples(examples, 0.25, seed=4) != (kept, held)


def test_pad_batch_truncates_keeping_the_start():
    idx, lengths = cd.pad_batch([[5, 6, 7, 8, 9], [1], [2, 3]], block_size=3, pad_id=0)
    np.testing.assert_array_equal(idx, [[5, 6, 7], [1, 0, 0], [2, 3, 0]])
    np.testing.assert_array_equal(lengths, [3, 1, 2])


def test_report_against_a_hand_count():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 1, 0, 1, 1, 1]
    r = cd.classification_report(y_true, y_pred, ["a", "b", "c"])
    assert r["confusion"] == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"]["b"]["precision"] == pytest.approx(2 / 4)
    assert r["per_class"]["a"]["recall"] == pytest.approx(2 / 3)
    assert r["per_class"]["c"]["f1"] == 0.0  # never predicted: 0, not NaN
    f1_a = 2 * 1.0 * (2 / 3) / (1.0 + 2 / 3)
    f1_b = 2 * 0.5 * 1.0 / 1.5
    assert r["macro_f1"] == pytest.approx((f1_a + f1_b + 0.0) / 3)
    assert r["majority_baseline"] == pytest.approx(3 / 6) and r["majority_label"] == "a"
    assert "macro-F1" in cd.format_report(r)
