"""`npgpt gradcheck`: an all-pass table on the reference layers, and exit
status 1 as soon as one backward is wrong."""
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
