"""The outputs shown in docs/ are what the snippets print now."""
import importlib.util
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("regenerate_outputs", ROOT / "docs" / "tools" / "regenerate_outputs.py")
regen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regen)


def test_shown_outputs_are_current():
    stale = [page for page, _, _ in regen.stale_pages()]
    assert not stale, f"stale outputs in {stale}; run python docs/tools/regenerate_outputs.py"


def test_a_stale_block_is_detected():
    page = "```python\nprint(1 + 1)\n```\n\n<!-- output: sum -->\n```\n3\n```\n"
    assert regen.render(page) == page.replace("\n3\n", "\n2\n")


def test_every_page_has_marked_outputs():
    for page in regen.PAGES:
        assert "<!-- output: " in (ROOT / page).read_text(encoding="utf-8"), page


def readme_python_block(heading):
    """The first ```python block under README.md's `## heading`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(f"## {heading}\n"):]
    return regen.PYTHON_BLOCK.search(section).group(1)


def test_readme_python_loop_runs(tmp_path, monkeypatch, capsys):
    import math

    import numpy as np

    monkeypatch.chdir(tmp_path)  # the block writes my-model/
    namespace = {"__name__": "__readme__"}
    exec(compile(readme_python_block("Use it from Python"), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    loss = float(printed[0].split()[1])
    assert loss < math.log(namespace["tok"].vocab_size) - 1.0, printed  # it learned
    assert printed[1].startswith("ROMEO:")
    idx = np.array([namespace["tok"].encode("ROMEO: But soft")])
    np.testing.assert_allclose(namespace["same"].logits(idx), namespace["model"].logits(idx), rtol=1e-5, atol=1e-5)


def test_pages_render_in_a_fixed_child_process(tmp_path, monkeypatch):
    # What a page shows must not depend on the calling process: its threads, its imports.
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    monkeypatch.setenv("PYTHONHASHSEED", "123")
    page = tmp_path / "page.md"
    page.write_text("```python\nimport os, pathlib, npgpt\n"
                    "print(pathlib.Path(npgpt.__file__).resolve().parent)\n"
                    "print(os.environ['OPENBLAS_NUM_THREADS'], os.environ['PYTHONHASHSEED'], os.getpid())\n```\n\n"
                    "<!-- output: where -->\n```\n?\n```\n", encoding="utf-8")
    shown = regen.rendered_pages([str(page)])[str(page)].split("<!-- output: where -->\n```\n")[1].splitlines()
    assert shown[0] == str(ROOT / "npgpt")
    threads, hash_seed, pid = shown[1].split()
    assert (threads, hash_seed) == ("1", "0")
    assert int(pid) != os.getpid()
