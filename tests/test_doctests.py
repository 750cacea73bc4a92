"""Every `>>>` example in npgpt's docstrings runs, and prints what it shows.

Modules are found by walking the package, so a new module's examples are
checked without being listed here.  The examples use tiny models with the
NumPy backend (or kernels the other tests compile anyway): this stays fast.
"""
import doctest
import importlib
import pkgutil

import pytest

import npgpt

SKIP = {"npgpt.__main__"}  # importing it would run the command line


def modules_with_examples():
    names = []
    for info in pkgutil.walk_packages(npgpt.__path__, prefix="npgpt."):
        if info.name in SKIP:
            continue
        spec = importlib.util.find_spec(info.name)
        if spec and spec.origin and spec.origin.endswith(".py"):
            with open(spec.origin, encoding="utf-8") as f:
                if ">>>" in f.read():
                    names.append(info.name)
    return sorted(names)


MODULES = modules_with_examples()


def test_the_examples_are_found():
    assert {"npgpt.model", "npgpt.optim", "npgpt.reference", "npgpt.tokenizers.char"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True)
    assert result.attempted > 0, f"{name} has '>>>' but no example ran"
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (see the output above)"


def test_a_wrong_example_fails():
    """The check can fail: an example whose shown output is wrong is reported."""
    def wrong():
        """
        >>> 1 + 1
        3
        """

    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(wrong, "wrong", globs={}):
        runner.run(test, out=lambda s: None)
    assert runner.failures == 1
