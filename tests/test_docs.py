"""The outputs shown in docs/ are what the snippets print now."""
import importlib.util
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
