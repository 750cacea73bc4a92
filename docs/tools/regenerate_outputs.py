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

The pages are rendered in a child process with a fixed environment
(RENDER_ENV), never in the caller's: what a page shows must not depend on
which npgpt the caller imported first (an installed one, another
checkout's), on what earlier code in the process loaded or changed, or on
the machine's core count.  One thread everywhere fixes the order of every
floating-point sum (BLAS and Numba split a reduction into one partial sum
per thread), so a rounding-level figure such as a 3e-11 gradcheck error is
the same on every run and every machine with the same libraries.

    python docs/tools/regenerate_outputs.py           # rewrite the pages
    python docs/tools/regenerate_outputs.py --check   # exit 1 if a page is stale

tests/test_docs.py runs the --check path.
"""
import contextlib
import io
import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Pages with marked outputs.
PAGES = ["docs/layers/linear.md", "docs/layers/layernorm.md", "docs/layers/gelu.md", "docs/layers/attention.md",
         "docs/layers/cross_entropy.md", "docs/layers/embedding.md", "docs/layers/dropout.md", "docs/layers/lora.md",
         "docs/gradcheck.md", "docs/exercises.md", "docs/pretrained.md"]

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


# The child's environment: this checkout's npgpt first, one thread for BLAS,
# OpenMP and Numba, a fixed hash seed.
RENDER_ENV = {
    "PYTHONHASHSEED": "0",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


def rendered_pages(pages=PAGES):
    """-> {page: regenerated text} for every page that exists (paths relative to the repository or
    absolute), rendered in a child process."""
    env = dict(os.environ, **RENDER_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    child = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "--render-in-this-process", *pages],
                           cwd=ROOT, env=env, capture_output=True, text=True, encoding="utf-8")
    if child.returncode != 0:
        raise RuntimeError(f"rendering the pages failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout)


def render_here(pages=PAGES):
    """The child's side: render the pages in this process -> {page: text}."""
    sys.path.insert(0, str(ROOT))
    import npgpt

    where = pathlib.Path(npgpt.__file__).resolve().parent
    if where != ROOT / "npgpt":  # a page must show this checkout's code
        raise RuntimeError(f"imported npgpt from {where}, not from {ROOT / 'npgpt'}")
    return {page: render((ROOT / page).read_text(encoding="utf-8"), page) for page in pages
            if (ROOT / page).exists()}


def stale_pages():
    """-> [(page, committed text, regenerated text)] for every page whose outputs changed."""
    stale = []
    for page, new in rendered_pages().items():
        text = (ROOT / page).read_text(encoding="utf-8")
        if new != text:
            stale.append((page, text, new))
    return stale


def main(argv):
    if "--render-in-this-process" in argv:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON
            pages = render_here([a for a in argv if not a.startswith("--")] or PAGES)
        print(json.dumps(pages))
        return 0
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
