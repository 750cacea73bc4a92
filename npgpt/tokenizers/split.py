"""Split patterns: the regex that cuts text into chunks before BPE, treated as untrusted input.

A tokenizer file or checkpoint carries its split pattern as a string, and
a regex is a small program: a crafted one can hang (catastrophic
backtracking, or a compile that never ends), silently drop text (whatever
no match covers is lost: 'hello world' -> 'helloworld'), or return groups
instead of chunks.  Every pattern npgpt loads goes through one function:

    splitter = check_split_pattern(pattern, where="tok.json")   # UserError naming `where` if refused
    splitter.split("hello world")  -> ['hello', ' world']

GPT-2's pattern (the one npgpt writes) is on an allow-list and runs as is.
Any other pattern is vetted once per process:
  1. at most MAX_PATTERN_CHARS characters;
  2. compiled and run on probe texts (every ASCII character, many
     scripts, digits, emoji, whitespace of each kind, long runs of each)
     first in a child process with a time and memory bound, killed at the
     deadline (a pattern such as (?:(?:a{1000}){1000}){1000} takes minutes
     to compile, (?:a|aa)+$ backtracks exponentially);
  3. no capture groups (findall would return groups, not chunks);
  4. on the probe texts its chunks must be non-empty and add up to the text.
A vetted pattern still runs under guard: each split has a time bound
proportional to the text, and if its chunks do not add up to the text
(text the probes did not cover) the split fails with one line instead of
dropping text.
"""
import subprocess
import sys

import regex

from ..errors import UserError

# GPT-2's pre-tokenization: contractions, an optional space + letters, an
# optional space + digits, an optional space + other symbols, then
# whitespace (a run of spaces keeps its last space for the next word).
# Linear and covering: every character is a letter, a digit, whitespace or
# none of those, and each class has an alternative of its own.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
KNOWN_PATTERNS = frozenset({GPT2_SPLIT_PATTERN})  # the patterns npgpt writes

MAX_PATTERN_CHARS = 4096  # GPT-4o's pattern is ~600 characters
COMPILE_SECONDS = 3.0  # the child process's bound on starting and compiling a pattern ...
PROBE_SECONDS = 2.0  # ... plus this for all probes together (a linear pattern needs a few ms)
CHILD_MEMORY = 1 << 30  # the child's address space
RUN_SECONDS = 2.0  # a vetted pattern's time bound on a split: this ...
RUN_SECONDS_PER_CHAR = 20e-6  # ... plus this per character (~100x a linear pattern's cost)
RUN_LENGTH = 1024  # probe runs of one character: exponential backtracking shows long before this

_SAMPLES = [
    "Hello world! It's a test: don't, we'll, I'm, you've, they're, she'd. IT'S LOUD",
    "  leading and trailing spaces  ", "tabs\tand\nnewlines\r\n\n\n  \n\t x", "\u00a0nbsp\u2028ls\u3000ideo\ufeffbom",
    "numbers 123 4.56 7,890 1e10 -5 \u00b2\u00b3 \u0663\u0664 \u2167 \u00bd",
    "punctuation !?.,;:-_()[]{}<>@#$%^&*+=/\\|`~\"' ...",
    "caf\u00e9 na\u00efve \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u0440\u0443\u0441\u0441\u043a\u0438\u0439 "
    "\u4e2d\u6587 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 "
    "\u05e2\u05d1\u05e8\u05d9\u05ea \u0939\u093f\u0928\u094d\u0926\u0940",
    "emoji \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 \u2728 e\u0301 a\u0308 \ufffd",
    "control \x00\x01\x07\x1b\x7f\x85 end", "<|endoftext|> special-looking text <|im_start|>",
]
_RUN_CHARS = ["a", "Z", "\u00e9", "\u4e2d", "1", "\u0663", " ", "\n", "\t", "!", "'", "_", "\U0001f44d", "\u0301"]


def _probes():
    """Texts a split pattern must cover exactly and quickly."""
    singles = [chr(c) for c in range(128)] + [c for s in _SAMPLES for c in s if ord(c) >= 128]
    yield from singles
    yield "".join(chr(c) for c in range(128))
    yield from _SAMPLES
    yield "".join(_SAMPLES)
    for length in (16, 32, 64, 128, RUN_LENGTH):  # growing: exponential backtracking shows early
        for c in _RUN_CHARS:
            for end in ("", "!", "a", " ", "1", "\n"):
                yield c * length + end
    yield ("a " * RUN_LENGTH) + ("1!" * RUN_LENGTH) + (" \n" * RUN_LENGTH)


class Splitter:
    """A checked split pattern: `split(text)` -> the list of chunks, which always add up to text."""

    def __init__(self, pattern, compiled, known):
        self.pattern, self.regex, self.known = pattern, compiled, known

    def split(self, text):
        if self.known:  # proven linear and covering: no guard needed
            return self.regex.findall(text)
        try:
            chunks = self.regex.findall(text, timeout=RUN_SECONDS + RUN_SECONDS_PER_CHAR * len(text))
        except TimeoutError:
            raise UserError(f"the tokenizer's split pattern {_shown(self.pattern)} took too long on a "
                            f"{len(text):,}-character text (catastrophic backtracking?); refused") from None
        if sum(map(len, chunks)) != len(text):
            at = _first_gap(chunks, text)
            raise UserError(f"the tokenizer's split pattern {_shown(self.pattern)} drops text at character {at} "
                            f"({text[at:at + 20]!r}); refused instead of losing it")
        return chunks


_vetted = {}  # pattern -> Splitter, or the UserError message it was refused with


def check_split_pattern(pattern, where=None):
    """A Splitter for `pattern`, or UserError (one line, starting with `where:` if given) if it could hang or
    drop text.

    Accepts GPT-2's pattern at once; vets any other (see the module
    docstring) once per process.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(pattern, str):
        raise UserError(f"{prefix}the split pattern must be a string, got {type(pattern).__name__}")
    if pattern not in _vetted:
        try:
            _vetted[pattern] = _vet(pattern)
        except UserError as e:
            _vetted[pattern] = str(e)
    verdict = _vetted[pattern]
    if isinstance(verdict, str):
        raise UserError(prefix + verdict)
    return verdict


def _vet(pattern):
    if pattern in KNOWN_PATTERNS:
        return Splitter(pattern, regex.compile(pattern), known=True)
    shown = _shown(pattern)
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UserError(f"split pattern of {len(pattern):,} characters refused (at most {MAX_PATTERN_CHARS})")
    unexplained = _run_in_child(pattern, shown)
    try:
        compiled = regex.compile(pattern)
    except (regex.error, ValueError, OverflowError) as e:
        raise UserError(f"invalid split pattern {shown}: {e}") from None
    if compiled.groups:
        raise UserError(f"split pattern {shown} has {compiled.groups} capture group(s); a split pattern's "
                        "matches are its chunks, so write groups as (?:...)")
    _probe(compiled, shown, unexplained)
    return Splitter(pattern, compiled, known=False)


_CHILD = """
import json, resource, sys
limit = int(sys.argv[1])
try:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
except (ValueError, OSError):
    pass
import regex
job = json.loads(sys.stdin.read())
try:
    compiled = regex.compile(job["pattern"])
except MemoryError:
    sys.exit(4)
except Exception:
    sys.exit(3)  # invalid: the parent compiles it again and reports regex's own message
print("compiled", flush=True)
for i, text in enumerate(job["probes"]):
    print(i, flush=True)
    chunks = compiled.findall(text) if compiled.groups == 0 else [text]
    if "" in chunks or sum(map(len, chunks)) != len(text):  # the parent finds out which
        print("bad", i, flush=True)
        break
"""


def _run_in_child(pattern, shown):
    """Compile the pattern and run it on the probes in a child process that is killed at the deadline.

    Returns the probes the parent must still check itself: the first one
    the pattern failed to cover in the child (to word the message), none if
    all were covered.  In-process, neither a compile nor a match can be interrupted reliably
    (regex's own timeout is checked too rarely inside one long backtrack).
    """
    import json

    probes = list(_probes())
    job = json.dumps({"pattern": pattern, "probes": probes})
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(CHILD_MEMORY)], input=job, text=True,
                              capture_output=True, timeout=COMPILE_SECONDS + PROBE_SECONDS)
    except subprocess.TimeoutExpired as e:
        said = (e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or "").split()
        if "compiled" not in said:
            raise UserError(f"split pattern {shown} takes too long to compile; refused") from None
        length = len(probes[int(said[-1])]) if said[-1].isdigit() else 0
        raise UserError(f"split pattern {shown} is too slow on a probe text of {length:,} characters "
                        "(catastrophic backtracking?); refused") from None
    except OSError:
        return probes  # no child process possible (an unusual sandbox): probe in-process, with regex's timeouts
    if proc.returncode == 4 or (proc.returncode not in (0, 3) and "compiled" not in proc.stdout):
        raise UserError(f"split pattern {shown} needs too much memory to compile; refused")
    if proc.returncode not in (0, 3):
        raise UserError(f"split pattern {shown} fails on a probe text (exit status {proc.returncode}); refused")
    said = proc.stdout.split()
    return [probes[int(said[-1])]] if "bad" in said else []  # the probe to explain, if any


def _probe(compiled, shown, probes):
    """Each probe's chunks must be non-empty and add up to the probe; UserError naming the first that is not."""
    for text in probes:
        try:
            chunks = compiled.findall(text, timeout=PROBE_SECONDS)
        except TimeoutError:
            raise UserError(f"split pattern {shown} is too slow on a probe text of {len(text):,} characters "
                            "(catastrophic backtracking?); refused") from None
        if "" in chunks:
            raise UserError(f"split pattern {shown} matches the empty string (on {text[:20]!r}); refused")
        if sum(map(len, chunks)) != len(text):
            at = _first_gap(chunks, text)
            raise UserError(f"split pattern {shown} drops text: on {text[:40]!r} it loses character {at} "
                            f"({text[at]!r}); refused")


def _first_gap(chunks, text):
    """The first character of text that the chunks (in order) do not cover."""
    pos = 0
    for chunk in chunks:
        at = text.find(chunk, pos)
        if at != pos:
            return pos
        pos += len(chunk)
    return pos


def _shown(pattern):
    text = repr(pattern)
    return text if len(text) <= 60 else text[:57] + "...'"


# Where GPT-2's pattern may cut a text so that splitting the two parts gives
# exactly the chunks of splitting the whole: after a non-space character
# followed by whitespace, or after a character that is none of space, letter
# or apostrophe followed by a letter.  The chunk holding the character before
# the cut is then a letter, digit or symbol run (or a contraction) that stops
# there whatever follows, the pattern looks at most one character past a
# match, and it has no lookbehind, so the part after the cut splits the same
# alone.  (Both parts are tested against the whole in tests/test_hostile_stream.py.)
_GPT2_CUT = regex.compile(r"(?r)(?:\S(?=\s)|[^\s\p{L}'](?=\p{L}))")


def safe_cut(text, pattern, specials=(), start=0):
    """The last position q >= start of text where `pattern` may cut it (see above), or None.

    Positions before `start` are not looked at (a caller that found none
    there before passes the old length, so a long text is scanned once).

    Only GPT-2's pattern has known cut points; for any other pattern the
    answer is None (the text must be split whole).  A cut never falls inside
    an occurrence of one of the `specials` strings.
    """
    if pattern != GPT2_SPLIT_PATTERN:
        return None
    longest = max(map(len, specials), default=1)
    # A special token may begin before q and end in text not read yet: keep q at least
    # longest - 1 characters before the end, where every occurrence spanning it is visible.
    end = min(len(text), len(text) - longest + 2)
    from_pos = max(start - longest, 0)  # a caller's earlier text was searched up to here
    while True:
        m = _GPT2_CUT.search(text, from_pos, end) if end > from_pos else None  # backwards: the last cut point
        if m is None:
            return None
        q = m.end()
        inside = _special_around(text, q, specials)
        if inside is None:
            return q
        end = inside + 1  # try again before that special token


def _special_around(text, q, specials):
    """The start of an occurrence of a special string that spans position q (starts before, ends after), or None."""
    for s in specials:
        first = max(q - len(s) + 1, 0)
        at = text.find(s, first, q + len(s) - 1)
        while at != -1 and at < q:
            if at + len(s) > q:
                return at
            at = text.find(s, at + 1, q + len(s) - 1)
    return None
