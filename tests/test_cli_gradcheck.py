"""`npgpt gradcheck`: an all-pass table on the reference layers, exit
status 1 as soon as one backward is wrong, the layer filter, --verbose, and
--file for a learner's own layer."""
import textwrap

import numpy as np
import pytest

from npgpt import cli, gradcheck, gradcheck_cli, layers

LAYERS = {"embedding", "linear", "layernorm", "gelu", "attention", "cross_entropy", "dropout"}


def table_rows(output):
    """The rows of the printed table: [(layer, input, error, result)]."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line.replace(" ", "")) == {"-"}) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        if line.startswith(" "):  # a failing row's worst entry, under it
            continue
        layer, name, error, result = line.split()
        rows.append((layer, name, float(error), result))
    return rows


def test_gradcheck_command_prints_an_all_pass_table(capsys):
    status = cli.main(["gradcheck", "--backend", "numpy"])
    out = capsys.readouterr().out
    assert status == 0, out
    rows = table_rows(out)
    assert {layer for layer, *_ in rows} == LAYERS | {"model[numpy]"}  # every layer, and the model; no numba
    assert all(result == "pass" and error < gradcheck.DEFAULT_TOL for _, _, error, result in rows), out
    model_inputs = {name for layer, name, *_ in rows if layer == "model[numpy]"}
    expected = {"wte.weight", "wpe.weight", "ln_f.weight", "h.0.attn.c_attn.weight", "h.0.mlp.c_proj.weight"}
    assert expected <= model_inputs
    assert "FAIL" not in out
    assert f"{len(rows)} checks, all passed" in out
    assert "Noise floor: an entry smaller than 1e-05 x the largest gradient" in out
    assert "worst entry" not in out  # details only for failing rows, or with --verbose


@pytest.fixture
def gelu_backward_off_by_a_tenth_of_a_percent(monkeypatch):
    """A subtly wrong GELU backward, seen by both the layer check and the model."""
    real = layers.gelu.backward

    def wrong(dout, cache):
        return real(dout, cache) * 1.001

    monkeypatch.setattr(layers.gelu, "backward", wrong)


def test_run_suite_reports_the_broken_layer(gelu_backward_off_by_a_tenth_of_a_percent):
    report = gradcheck_cli.run_suite(("numpy",))
    assert not report.passed
    failed = {(r.layer, r.input) for r in report.results if not r.passed}
    assert ("gelu", "x") in failed
    assert {layer for layer, _ in failed} == {"gelu", "model[numpy]"}  # the other layers still pass
    assert ("model[numpy]", "h.0.mlp.c_fc.weight") in failed  # the weights upstream of the GELU


def test_gradcheck_command_exits_1_on_a_broken_backward(capsys, gelu_backward_off_by_a_tenth_of_a_percent):
    status = cli.main(["gradcheck", "--backend", "numpy"])
    out = capsys.readouterr().out
    assert status == 1
    rows = table_rows(out)
    gelu_row = next(row for row in rows if row[0] == "gelu")
    assert gelu_row[3] == "FAIL" and gelu_row[2] > 1e-4
    n_failed = sum(result == "FAIL" for *_, result in rows)
    assert n_failed >= 2 and f"{n_failed} FAILED" in out
    assert np.isfinite([error for _, _, error, _ in rows]).all()
    assert "Failing rows" in out  # repeated at the end, with their worst entries
    tail = out[out.index("Failing rows"):]
    assert "gelu" in tail and "worst entry x[" in tail and "ratio 1.001" in tail, tail


@pytest.mark.parametrize("argv", [["gelu", "layernorm"], ["--only", "gelu,layernorm"], ["gelu", "--only", "layernorm"]])
def test_layer_filter(capsys, argv):
    assert cli.main(["gradcheck", "--backend", "numpy", *argv]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert {layer for layer, *_ in rows} == {"gelu", "layernorm"}
    assert len(rows) == 4


def test_unknown_layer_is_one_line(capsys):
    assert cli.main(["gradcheck", "layrnorm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npgpt: error: unknown layer 'layrnorm' (choose from embedding, linear") and err.count("\n") == 1


def test_verbose_shows_every_rows_worst_entry(capsys):
    assert cli.main(["gradcheck", "--backend", "numpy", "--verbose", "linear"]) == 0
    out = capsys.readouterr().out
    for name in ("x[", "w[", "b["):
        assert f"worst entry {name}" in out, out
    assert "ratio 1.000" in out


TANH = """
import numpy as np

def forward(x):
    out = np.tanh(x)
    return out, (x, out)

def backward(dout, cache):
    x, out = cache
    return {grad} * (1 - out**2)
"""


def write(tmp_path, text, name="my_layer.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_file_checks_a_learners_layer(tmp_path, capsys):
    good = write(tmp_path, TANH.format(grad="dout"))
    assert cli.main(["gradcheck", "--file", good]) == 0
    out = capsys.readouterr().out
    assert table_rows(out) == [("my_layer", "x", table_rows(out)[0][2], "pass")]
    bad = write(tmp_path, TANH.format(grad="x"), "bad.py")  # the bug: x where dout belongs
    assert cli.main(["gradcheck", "--file", bad]) == 1
    out = capsys.readouterr().out
    assert "bad    x      1.00e+00       FAIL" in out and "worst entry x[" in out


def test_file_uses_its_inputs_function(tmp_path, capsys):
    path = write(tmp_path, """
        import numpy as np

        def forward(x, w):
            return x @ w, (x, w)

        def backward(dout, cache):
            x, w = cache
            return [dout @ w.T, x.T @ dout]   # a list works too

        def inputs():
            rng = np.random.default_rng(0)
            return {"x": rng.standard_normal((4, 3)), "w": rng.standard_normal((3, 2))}
        """)
    assert cli.main(["gradcheck", "--file", path, "--verbose"]) == 0
    out = capsys.readouterr().out
    assert [row[:2] for row in table_rows(out)] == [("my_layer", "x"), ("my_layer", "w")]


@pytest.mark.parametrize("text, message", [
    ("def forward(x):\n    return x, x\n", "defines no backward function"),
    ("def forward(x:\n", "loading it raised SyntaxError"),
    ("import numpy as np\ndef forward(x):\n    return x, x\ndef backward(dout, cache):\n"
     "    raise NotImplementedError('write me')\n", "backward is not written yet (write me)"),
    ("import numpy as np\ndef forward(x):\n    return x, x\ndef backward(dout, cache):\n"
     "    return dout @ np.ones((7, 7))\n", "backward raised ValueError: matmul"),
    ("import numpy as np\ndef forward(x, w):\n    return x @ w, (x, w)\ndef backward(dout, cache):\n"
     "    return dout, dout\n", "on the default inputs"),
    ("def forward(x):\n    return x, x\ndef backward(dout, cache):\n    return dout\n"
     "def inputs():\n    return {'idx': [1, 2]}\n", "nothing to check"),
])
def test_file_errors_are_one_line(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    assert cli.main(["gradcheck", "--file", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npgpt: error: ") and message in err and err.count("\n") == 1, err


def test_file_missing_and_with_layer_names(tmp_path, capsys):
    assert cli.main(["gradcheck", "--file", str(tmp_path / "nope.py")]) == 2
    assert "no such file" in capsys.readouterr().err
    path = write(tmp_path, TANH.format(grad="dout"))
    assert cli.main(["gradcheck", "--file", path, "gelu"]) == 2
    assert "leave out the layer names" in capsys.readouterr().err


def test_help_warns_that_the_file_is_run(capsys):
    with pytest.raises(SystemExit):
        cli.main(["gradcheck", "--help"])
    assert "its code runs" in " ".join(capsys.readouterr().out.split())
