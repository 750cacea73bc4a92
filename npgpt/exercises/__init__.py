"""Backprop exercises: each layer's forward is given, its backward is yours to write.

    npgpt exercise init my_exercises          # copy the exercise files out
    (edit my_exercises/linear.py: write backward)
    npgpt exercise check my_exercises linear  # gradcheck your answer
    npgpt exercise check my_exercises         # every exercise, in order

(`python -m npgpt.exercises ...` does the same.)  The check runs
npgpt.gradcheck.check_layer on your forward and backward over fixed inputs
and says which input's gradient is wrong, with the worst entry, or that the
backward is not written yet.  npgpt's own layers (npgpt/layers/) are the
solutions.  Walkthrough: docs/exercises.md.
"""
import argparse
import pathlib
import shutil
from dataclasses import dataclass, field

import numpy as np

from .. import gradcheck, layers
from ..errors import UserError
from ..gradcheck_cli import NotWrittenYet, guarded, load_layer_file

TEMPLATES = pathlib.Path(__file__).resolve().parent / "templates"


def _linear_inputs(rng, with_bias=True):
    return {"x": rng.standard_normal((2, 3, 4)), "w": rng.standard_normal((4, 5)),
            "b": rng.standard_normal(5) if with_bias else None}


def _layernorm_inputs(rng, with_bias=True):
    return {"x": 2.0 * rng.standard_normal((2, 3, 6)) + 1.0, "w": rng.standard_normal(6),
            "b": rng.standard_normal(6) if with_bias else None}


def _embedding_inputs(rng):
    idx = np.array([[1, 3, 1, 0], [3, 3, 2, 1]])  # repeated ids, and id 4 never used
    return {"idx": idx, "wte": rng.standard_normal((5, 3)), "wpe": rng.standard_normal((6, 3))}


def _cross_entropy_inputs(rng):
    targets = np.array([[1, 4, 0], [-1, 2, 2]])  # one ignored position
    return {"logits": rng.standard_normal((2, 3, 5)), "targets": targets}


def _ce(smoothing):
    return lambda module: (lambda logits, targets: module.forward(logits, targets, label_smoothing=smoothing))


def _dropout(p):
    return lambda module: (lambda x: module.forward(x, p, np.random.default_rng(1)))  # the same mask every call


def _plain(module):
    return module.forward


@dataclass
class Exercise:
    """name: the file (name.py) and npgpt.layers module; cases: [(label, forward_of(module), inputs_of(rng))]."""
    name: str
    doc: str
    cases: list = field(default_factory=list)


# In the order to do them: each one uses an idea from those before it.
EXERCISES = [
    Exercise("linear", "docs/layers/linear.md", [
        ("linear", _plain, _linear_inputs),
        ("linear, no bias", _plain, lambda rng: _linear_inputs(rng, with_bias=False))]),
    Exercise("gelu", "docs/layers/gelu.md", [("gelu", _plain, lambda rng: {"x": 2.0 * rng.standard_normal((2, 3, 4))})]),
    Exercise("dropout", "docs/layers/dropout.md", [
        ("dropout, p=0.25", _dropout(0.25), lambda rng: {"x": rng.standard_normal((2, 3, 4))}),
        ("dropout, p=0", _dropout(0.0), lambda rng: {"x": rng.standard_normal((2, 3, 4))})]),
    Exercise("embedding", "docs/layers/embedding.md", [("embedding", _plain, _embedding_inputs)]),
    Exercise("cross_entropy", "docs/layers/cross_entropy.md", [
        ("cross_entropy", _ce(0.0), _cross_entropy_inputs),
        ("cross_entropy, label_smoothing=0.1", _ce(0.1), _cross_entropy_inputs)]),
    Exercise("layernorm", "docs/layers/layernorm.md", [
        ("layernorm", _plain, _layernorm_inputs),
        ("layernorm, no bias", _plain, lambda rng: _layernorm_inputs(rng, with_bias=False))]),
    Exercise("attention", "docs/layers/attention.md", [
        ("attention", _plain, lambda rng: {"qkv": rng.standard_normal((2, 4, 3 * 6)), "n_head": 2}),
        ("attention, one head", _plain, lambda rng: {"qkv": rng.standard_normal((1, 3, 3 * 4)), "n_head": 1})]),
]
NAMES = [e.name for e in EXERCISES]


def get(name):
    for exercise in EXERCISES:
        if exercise.name == name:
            return exercise
    raise UserError(f"no exercise {name!r} (choose from {', '.join(NAMES)})")


def init(directory, force=False):
    """Copy every exercise file into directory (created if missing) -> [paths written].

    Existing files are kept (your work is not overwritten) unless force."""
    directory = pathlib.Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory}: exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in NAMES:
        target = directory / f"{name}.py"
        if target.exists() and not force:
            continue
        shutil.copyfile(TEMPLATES / f"{name}.py", target)
        written.append(target)
    return written


@dataclass
class Outcome:
    """The verdict on one exercise: status is 'pass', 'FAIL', 'not written yet', 'missing' or 'error'."""
    name: str
    status: str
    message: str = ""
    report: gradcheck.GradcheckReport = None

    @property
    def passed(self):
        return self.status == "pass"


def check_file(path, name=None, backward=None):
    """Gradcheck the exercise in path (name: which exercise; default: the file's name) -> Outcome.

    backward: use this instead of the file's backward (the tests plug in npgpt's own layers).
    """
    path = pathlib.Path(path)
    exercise = get(name or path.stem)
    if not path.is_file():
        return Outcome(exercise.name, "missing", f"{path} does not exist (npgpt exercise init {path.parent})")
    try:
        module = load_layer_file(path)
        for required in ("forward", "backward"):
            if not callable(getattr(module, required, None)):
                raise UserError(f"{path.name} has no {required} function")
        report = gradcheck.GradcheckReport()
        for label, forward_of, inputs_of in exercise.cases:
            inputs = inputs_of(np.random.default_rng(0))
            forward = guarded(forward_of(module), "forward", path)
            _same_as_reference(exercise, forward, forward_of, inputs, path)
            learner_backward = guarded(backward or module.backward, "backward", path)
            report.extend(gradcheck.check_layer(forward, learner_backward, inputs, name=label))
    except NotWrittenYet:
        return Outcome(exercise.name, "not written yet")
    except (UserError, ValueError) as error:  # a wrong number or shape of gradients, an exception in the file
        return Outcome(exercise.name, "error", str(error))
    if report.passed:
        return Outcome(exercise.name, "pass", "", report)
    return Outcome(exercise.name, "FAIL", _what_is_wrong(report), report)


def _same_as_reference(exercise, forward, forward_of, inputs, path):
    """Refuse a forward that no longer computes the layer: the check would prove the wrong thing."""
    reference = forward_of(getattr(layers, exercise.name))
    copies = lambda: [np.array(v) if isinstance(v, np.ndarray) else v for v in inputs.values()]  # noqa: E731
    ours, theirs = reference(*copies())[0], forward(*copies())[0]
    if np.shape(ours) != np.shape(theirs) or not np.allclose(ours, theirs, rtol=1e-10, atol=1e-12):
        raise UserError(f"{path.name}: forward no longer computes {exercise.name} (its output differs from "
                        f"npgpt.layers.{exercise.name}); the exercise is the backward, so restore forward "
                        f"from a fresh `npgpt exercise init`")


def _what_is_wrong(report):
    """'the gradient of w is wrong: at w[2, 1] yours is ...', once per wrong input, and what the numbers suggest."""
    lines, seen = [], set()
    for r in report.failures:
        if r.input in seen:
            continue
        seen.add(r.input)
        case = f" (with {r.layer.split(', ', 1)[1]})" if ", " in r.layer else ""  # e.g. label_smoothing=0.1
        lines.append(f"the gradient of {r.input} is wrong{case}: at {r.where()} yours is {r.analytic:.6g}, "
                     f"the numerical one {r.numerical:.6g} (ratio {gradcheck.format_ratio(r.ratio)})")
        if r.hint():
            lines.append("  " + r.hint())
    return "\n".join(lines)


def check(directory, names=None):
    """Check the exercises in directory (all, in order, or those named) -> [Outcome]."""
    directory = pathlib.Path(directory)
    if directory.is_file():  # `npgpt exercise check linear.py`, or `python linear.py`
        return [check_file(directory)]
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory (create it with: npgpt exercise init {directory})")
    return [check_file(directory / f"{get(name).name}.py", name) for name in (names or NAMES)]


def print_outcomes(outcomes, verbose=False):
    width = max(len(o.name) for o in outcomes)
    for outcome in outcomes:
        print(f"{outcome.name.ljust(width)}  {outcome.status}")
        if outcome.message:
            for line in outcome.message.splitlines():
                print(" " * (width + 2) + line)
        if outcome.report is not None and verbose:
            print("\n".join(" " * (width + 2) + line for line in outcome.report.format(verbose=verbose).splitlines()))
    n_pass = sum(o.passed for o in outcomes)
    summary = f"\n{n_pass} of {len(outcomes)} passed."
    todo = next((o for o in outcomes if not o.passed), None)
    if todo is not None:
        summary += f" Next: {todo.name} (hints in its backward's docstring, derivation in {get(todo.name).doc})."
    print(summary)


# ------------------------------------------------------------ the command
def add_arguments(parser):
    parser.description = ("Backprop exercises: every layer's forward is given, you write its backward, "
                          "and the gradient check tells you which input's gradient is wrong. "
                          "Walkthrough: docs/exercises.md.")
    sub = parser.add_subparsers(dest="exercise_command", metavar="ACTION")
    sub.required = True
    init_help = "copy the exercise files into DIR (created if missing) for you to edit"
    init_parser = sub.add_parser("init", help=init_help, description=init_help)
    init_parser.add_argument("directory", metavar="DIR")
    init_parser.add_argument("--force", action="store_true", help="overwrite files that already exist in DIR")
    check_help = ("gradcheck your backwards in DIR and say which input's gradient is wrong "
                  "(this imports the exercise files, so their code runs)")
    check_parser = sub.add_parser("check", help=check_help, description=check_help)
    check_parser.add_argument("directory", metavar="DIR", help="the directory from `init` (or one exercise file)")
    check_parser.add_argument("names", nargs="*", metavar="EXERCISE", help=f"which ({', '.join(NAMES)}; default: all)")
    check_parser.add_argument("--verbose", "-v", action="store_true",
                              help="show the full gradcheck table of every exercise, with each row's worst entry")


def run(args):
    if args.exercise_command == "init":
        written = init(args.directory, args.force)
        kept = len(NAMES) - len(written)
        print(f"wrote {len(written)} exercise files to {args.directory}" + (f" (kept {kept} that exist)" if kept else ""))
        print(f"Start with {pathlib.Path(args.directory) / 'linear.py'}, then: npgpt exercise check {args.directory} linear")
        return 0
    outcomes = check(args.directory, args.names)
    print_outcomes(outcomes, args.verbose)
    return 0 if all(o.passed for o in outcomes) else 1


def main(argv=None):
    """`python -m npgpt.exercises ...`, and `python linear.py` from an exercise file."""
    import sys

    from ..cli import main as cli_main

    sys.exit(cli_main(["exercise", *(argv if argv is not None else sys.argv[1:])]))
