"""Rerun the docs' code snippets and rewrite their shown outputs.

A page marks an output block with a comment line just before it:

    ```python
    print(...)
    ```

    <!-- output: attention-check -->
    ```
    ...what the snippet printed...
    ```

The ```python block nearest above the marker is run (in a fresh namespace,
float64 NumPy, the repository's own npgpt) and the fenced block after the
marker is replaced with what it printed.

    python docs/tools/regenerate_outputs.py           # rewrite the pages
    python docs/tools/regenerate_outputs.py --check   # exit 1 if a page is stale

tests/test_docs.py runs the --check path.
"""
import contextlib
import io
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Pages with marked outputs.
PAGES = ["docs/layers/attention.md", "docs/gradcheck.md", "docs/exercises.md", "docs/layers/lora.md",
         "docs/pretrained.md"]

MARKER = re.compile(r"<!-- output: ([\w-]+) -->\n```\n(.*?)```\n", re.S)
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```\n", re.S)


def run_snippet(source, where):
    """source: Python code -> everything it printed (str)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            exec(compile(source, where, "exec"), {"__name__": "__snippet__"})
        except Exception as error:  # name the snippet, not this script
            raise RuntimeError(f"{where}: the snippet raised {error!r}") from error
    return buffer.getvalue()


def render(text, page="page"):
    """A page's text -> the same text with every marked output block regenerated."""
    pieces, pos = [], 0
    for match in MARKER.finditer(text):
        snippets = list(PYTHON_BLOCK.finditer(text, 0, match.start()))
        if not snippets:
            raise ValueError(f"{page}: output {match.group(1)!r} has no ```python block above it")
        output = run_snippet(snippets[-1].group(1), f"{page}:{match.group(1)}")
        pieces += [text[pos:match.start()], f"<!-- output: {match.group(1)} -->\n```\n{output}```\n"]
        pos = match.end()
    pieces.append(text[pos:])
    return "".join(pieces)


def stale_pages():
    """-> [(page, committed text, regenerated text)] for every page whose outputs changed."""
    sys.path.insert(0, str(ROOT))
    stale = []
    for page in PAGES:
        path = ROOT / page
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        new = render(text, page)
        if new != text:
            stale.append((page, text, new))
    return stale


def main(argv):
    check = "--check" in argv
    stale = stale_pages()
    for page, _, new in stale:
        if check:
            print(f"{page}: shown outputs are stale; run python docs/tools/regenerate_outputs.py")
        else:
            (ROOT / page).write_text(new, encoding="utf-8")
            print(f"rewrote {page}")
    return 1 if (check and stale) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
