"""Every notebook is the generator's output and runs without a failing cell.

A cell that raises (including a failed assert, which the notebooks use for
their sanity checks) fails this test with the cell's traceback.
"""
import importlib.util
import os
import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT = 600  # seconds; a notebook takes 5-15 s once the Numba kernels are cached (the first run compiles them, ~30 s)


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOKS / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILDER = _builder()


@pytest.mark.parametrize("name", sorted(BUILDER.NOTEBOOKS))
def test_notebook_is_generated(name):
    committed = (NOTEBOOKS / name).read_text(encoding="utf-8")
    assert committed == BUILDER.notebook_json(BUILDER.NOTEBOOKS[name]), (
        f"notebooks/{name} differs from notebooks/build_notebooks.py; run python notebooks/build_notebooks.py"
    )


@pytest.mark.parametrize("name", sorted(BUILDER.NOTEBOOKS))
def test_notebook_runs(name, monkeypatch):
    # The kernel is a child process: put this checkout first on its path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute()
    print(f"{name}: {time.perf_counter() - start:.1f} s")
