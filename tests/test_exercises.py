"""npgpt/exercises: the templates, `npgpt exercise init|check`, and the promise
that npgpt's own layers are the solutions while a wrong answer is reported
naming the input whose gradient is wrong."""
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from npgpt import cli, exercises, layers

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOT_WRITTEN = 'raise NotImplementedError("write {name}\'s backward (hints in its docstring)")'


def test_every_layer_has_an_exercise_with_a_forward_and_an_unwritten_backward():
    assert set(exercises.NAMES) == set(layers.__all__)
    for exercise in exercises.EXERCISES:
        text = (exercises.TEMPLATES / f"{exercise.name}.py").read_text()
        assert "def forward(" in text and ("def backward(dout, cache):" in text or "def backward(dloss, cache):" in text)
        assert NOT_WRITTEN.format(name=exercise.name) in text
        assert "Hints" in text and exercise.doc in text and (ROOT / exercise.doc).is_file()
        assert f"npgpt/layers/{exercise.name}.py" in text  # where the solution is


def test_init_copies_the_templates_and_keeps_the_learners_work(tmp_path, capsys):
    assert cli.main(["exercise", "init", str(tmp_path / "ex")]) == 0
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == sorted(f"{n}.py" for n in exercises.NAMES)
    mine = tmp_path / "ex" / "linear.py"
    mine.write_text("# my work\n")
    assert cli.main(["exercise", "init", str(tmp_path / "ex")]) == 0
    assert mine.read_text() == "# my work\n"  # never overwritten without --force
    assert "kept 7" in capsys.readouterr().out
    assert cli.main(["exercise", "init", str(tmp_path / "ex"), "--force"]) == 0
    assert mine.read_text() == (exercises.TEMPLATES / "linear.py").read_text()


@pytest.fixture
def fresh(tmp_path):
    exercises.init(tmp_path)
    return tmp_path


def test_a_fresh_copy_is_not_written_yet(fresh, capsys):
    assert cli.main(["exercise", "check", str(fresh)]) == 1
    out = capsys.readouterr().out
    for name in exercises.NAMES:
        assert any(line.split() == [name, "not", "written", "yet"] for line in out.splitlines()), out
    assert "0 of 7 passed. Next: linear" in out


@pytest.mark.parametrize("name", exercises.NAMES)
def test_npgpts_own_layer_is_the_solution(fresh, name):
    outcome = exercises.check_file(fresh / f"{name}.py", backward=getattr(layers, name).backward)
    assert outcome.status == "pass", outcome.message
    assert outcome.report.passed and len(outcome.report.results) >= 1


def solve(path, name, body=None):
    """Write an answer into a copied exercise: npgpt's own backward, or body."""
    text = path.read_text()
    body = body or f"from npgpt.layers import {name} as solution\n    return solution.backward(dout, cache)"
    path.write_text(text.replace(NOT_WRITTEN.format(name=name), body))


def test_a_solved_file_passes_through_the_command_and_as_a_script(fresh, capsys):
    solve(fresh / "linear.py", "linear")
    solve(fresh / "gelu.py", "gelu")
    assert cli.main(["exercise", "check", str(fresh), "linear", "gelu"]) == 0
    out = capsys.readouterr().out
    assert "linear  pass" in out and "gelu    pass" in out and "2 of 2 passed." in out
    # `python linear.py` in the exercise directory, and `python -m npgpt.exercises`: the same check
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = subprocess.run([sys.executable, "linear.py"], cwd=fresh, capture_output=True, text=True, env=env)
    assert script.returncode == 0 and "linear  pass" in script.stdout, script.stdout + script.stderr
    module = subprocess.run([sys.executable, "-m", "npgpt.exercises", "check", str(fresh), "dropout"],
                            capture_output=True, text=True, env=env)
    assert module.returncode == 1 and "dropout  not written yet" in module.stdout, module.stdout + module.stderr


# name: (a wrong answer, the input the report must name)
WRONG_ANSWERS = {
    "linear": ("from npgpt.layers import linear\n    dx, dw, db = linear.backward(dout, cache)\n"
               "    return dx, 2 * dw, db", "w"),
    "gelu": ("return dout * (1 - np.tanh(x) ** 2)", "x"),
    "dropout": ("return dout if scaled_mask is None else dout * (scaled_mask != 0)", "x"),
    "embedding": ("dwte = np.zeros(wte_shape)\n    dwte[idx] += dout\n    dwpe = np.zeros(wpe_shape)\n"
                  "    dwpe[:idx.shape[1]] = dout.sum(axis=0)\n    return dwte, dwpe", "wte"),
    "cross_entropy": ("from npgpt.layers import cross_entropy\n"
                      "    return cross_entropy.backward(dloss, cache) * n_valid", "logits"),
    "layernorm": ("C = w.shape[0]\n    g = dout * w\n    dx = rstd * (g - g.mean(axis=-1, keepdims=True))\n"
                  "    db = dout.reshape(-1, C).sum(0) if has_bias else None\n"
                  "    return dx, (dout * xhat).reshape(-1, C).sum(0), db", "x"),
    "attention": ("from npgpt.layers import attention\n"
                  "    return attention.backward(dout, (q, k, v, probs, 2 * scale))", "qkv"),
}


@pytest.mark.parametrize("name", exercises.NAMES)
def test_a_wrong_answer_is_reported_naming_the_input(fresh, capsys, name):
    body, wrong_input = WRONG_ANSWERS[name]
    solve(fresh / f"{name}.py", name, body)
    outcome = exercises.check_file(fresh / f"{name}.py")
    assert outcome.status == "FAIL", outcome.message
    assert {r.input for r in outcome.report.failures} == {wrong_input}, outcome.report
    assert re.search(rf"the gradient of {wrong_input} is wrong( \(with [^)]+\))?: at {wrong_input}\[", outcome.message)
    assert cli.main(["exercise", "check", str(fresh), name]) == 1
    out = capsys.readouterr().out
    assert f"{name}  FAIL" in out and f"the gradient of {wrong_input} is wrong" in out


def test_sum_instead_of_mean_shows_the_factor(fresh):
    solve(fresh / "cross_entropy.py", "cross_entropy", WRONG_ANSWERS["cross_entropy"][0])
    outcome = exercises.check_file(fresh / "cross_entropy.py")
    assert "(ratio 5.000)" in outcome.message and "same factor 5" in outcome.message  # 5 counted positions


def test_a_changed_forward_is_refused(fresh):
    path = fresh / "gelu.py"
    solve(path, "gelu")
    path.write_text(path.read_text().replace("out = 0.5 * x * (1.0 + np.tanh(u))", "out = 0.5 * x"))
    outcome = exercises.check_file(path)
    assert outcome.status == "error" and "forward no longer computes gelu" in outcome.message


@pytest.mark.parametrize("body, message", [
    ("return dout @ w", "backward raised ValueError: matmul"),
    ("return dout @ w.T, None, None", "backward returned None for w, expected a gradient of shape (4, 5)"),
    ("return undefined_name", "backward raised NameError: name 'undefined_name' is not defined (line"),
])
def test_an_answer_that_raises_or_has_the_wrong_shape_is_one_clear_line(fresh, capsys, body, message):
    solve(fresh / "linear.py", "linear", body)
    assert cli.main(["exercise", "check", str(fresh), "linear"]) == 1
    out = capsys.readouterr().out
    assert "linear  error" in out and message in out, out


def test_check_errors(tmp_path, capsys):
    assert cli.main(["exercise", "check", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert cli.main(["exercise", "check", str(tmp_path), "softmaxx"]) == 2
    assert "no exercise 'softmaxx'" in capsys.readouterr().err
    assert cli.main(["exercise", "check", str(tmp_path), "linear"]) == 1  # the file is missing
    assert "linear  missing" in capsys.readouterr().out


def test_the_exercise_inputs_exercise_the_tricky_parts():
    """Repeated ids, an ignored target, a float input everywhere: the checks are not vacuous."""
    rng = np.random.default_rng(0)
    cases = {label: inputs_of(rng) for e in exercises.EXERCISES for label, _, inputs_of in e.cases}
    assert len(np.unique(cases["embedding"]["idx"])) < cases["embedding"]["idx"].size
    assert (cases["cross_entropy"]["targets"] == -1).any()
    for label, inputs in cases.items():
        assert any(isinstance(v, np.ndarray) and v.dtype.kind == "f" for v in inputs.values()), label
    assert not math.isclose(float(np.std(cases["layernorm"]["x"])), 0.0)
