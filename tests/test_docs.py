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
