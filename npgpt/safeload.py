"""One validating loader for every JSON and TOML file npgpt reads.

Every file npgpt reads (checkpoint pointer, config, state, tokenizer JSON,
encoder.json, --config TOML, and later Hugging Face config files) goes
through here, so a crafted or corrupt file fails the same way: one
UserError line naming the file and, where it applies, the field.

Public API:

    load_json(path, schema=None, what=None, max_bytes=MAX_BYTES) -> object
    load_toml(path, schema=None, what=None, max_bytes=MAX_BYTES) -> dict
    parse_json(data, where, schema=None, max_bytes=MAX_BYTES) -> object   # bytes already read
    check(obj, schema, where) -> obj                                   # validate a parsed value

Guards, applied before parsing:
  - size: a file above max_bytes is refused (without reading it all);
  - depth: brackets are counted (outside strings) and nesting above
    MAX_DEPTH is refused, so the recursive parsers never reach Python's
    recursion limit.

A schema is a small description:
  - a type or tuple of types: int, float, str, bool, list, dict, type(None)
    (int never matches bool; float accepts int);
  - Int(min=0, max=None), Float(min=None, max=None, finite=True),
    Const(value), OneOf(*values);
  - Obj({"field": schema, ...}, optional={"field": schema}, extra=True):
    a dict with required and optional fields; extra=False refuses unknown keys;
  - List(item_schema, max_len=None), Map(value_schema) (a dict str -> value).

Example:
    POINTER = Obj({"format": Const("npgpt-checkpoint"), "version": Const(1),
                   "snapshot": str, "iter": Int(min=0), "files": Map(str)})
    load_json("out/checkpoint.json", POINTER)
    # UserError: out/checkpoint.json: field 'iter' must be an integer >= 0, got -3
"""
import json
import math
import os
import tomllib

from .errors import UserError

MAX_BYTES = 256 * 1024 * 1024  # tokenizer JSON of a 50k vocabulary is ~2 MB; leave wide room
MAX_DEPTH = 64  # npgpt's own files nest at most 3 deep; far below the recursion limit


# ------------------------------------------------------------------ schema
class Int:
    def __init__(self, min=None, max=None):
        self.min, self.max = min, max

    def describe(self):
        bounds = [f">= {self.min}"] if self.min is not None else []
        bounds += [f"<= {self.max}"] if self.max is not None else []
        return "an integer" + (" " + " and ".join(bounds) if bounds else "")

    def ok(self, v):
        return (isinstance(v, int) and not isinstance(v, bool)
                and (self.min is None or v >= self.min) and (self.max is None or v <= self.max))


class Float:
    def __init__(self, min=None, max=None, finite=True):
        self.min, self.max, self.finite = min, max, finite

    def describe(self):
        bounds = [f">= {self.min}"] if self.min is not None else []
        bounds += [f"<= {self.max}"] if self.max is not None else []
        return ("a finite number" if self.finite else "a number") + (" " + " and ".join(bounds) if bounds else "")

    def ok(self, v):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return False
        if self.finite and not math.isfinite(v):
            return False
        return (self.min is None or v >= self.min) and (self.max is None or v <= self.max)


class Const:
    def __init__(self, value):
        self.value = value

    def describe(self):
        return f"{self.value!r}"

    def ok(self, v):
        return type(v) is type(self.value) and v == self.value


class OneOf:
    def __init__(self, *values):
        self.values = values

    def describe(self):
        return "one of " + ", ".join(repr(v) for v in self.values)

    def ok(self, v):
        return any(type(v) is type(x) and v == x for x in self.values)


class Obj:
    def __init__(self, required, optional=None, extra=True):
        self.required, self.optional, self.extra = dict(required), dict(optional or {}), extra


class List:
    def __init__(self, item, max_len=None):
        self.item, self.max_len = item, max_len


class Map:
    def __init__(self, value):
        self.value = value


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list", dict: "an object", type(None): "null"}


def _short(v):
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_ok(v, t):
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if t is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t is bool:
        return isinstance(v, bool)
    return isinstance(v, t)


def _fail(where, field, expected, got):
    at = f": field '{field}'" if field else ""
    raise UserError(f"{where}{at} must be {expected}, got {_short(got)}")


def _check(obj, schema, where, field):
    if schema is None:
        return
    if isinstance(schema, type) or isinstance(schema, tuple):
        types = schema if isinstance(schema, tuple) else (schema,)
        if not any(_type_ok(obj, t) for t in types):
            _fail(where, field, " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types), obj)
        if float in types and isinstance(obj, float) and not math.isfinite(obj):
            _fail(where, field, "a finite number", obj)
    elif isinstance(schema, (Int, Float, Const, OneOf)):
        if not schema.ok(obj):
            _fail(where, field, schema.describe(), obj)
    elif isinstance(schema, Obj):
        if not isinstance(obj, dict):
            _fail(where, field, "an object", obj)
        for key, sub in schema.required.items():
            name = f"{field}.{key}" if field else key
            if key not in obj:
                raise UserError(f"{where}: field '{name}' is missing")
            _check(obj[key], sub, where, name)
        for key, sub in schema.optional.items():
            if key in obj:
                _check(obj[key], sub, where, f"{field}.{key}" if field else key)
        if not schema.extra:
            unknown = sorted(set(obj) - set(schema.required) - set(schema.optional))
            if unknown:
                raise UserError(f"{where}: unknown field '{unknown[0]}'")
    elif isinstance(schema, List):
        if not isinstance(obj, list):
            _fail(where, field, "a list", obj)
        if schema.max_len is not None and len(obj) > schema.max_len:
            raise UserError(f"{where}: field '{field}' has {len(obj)} items, at most {schema.max_len} allowed")
        for i, item in enumerate(obj):
            _check(item, schema.item, where, f"{field}[{i}]")
    elif isinstance(schema, Map):
        if not isinstance(obj, dict):
            _fail(where, field, "an object", obj)
        for key, value in obj.items():
            _check(value, schema.value, where, f"{field}.{key}" if field else str(key))
    else:
        raise TypeError(f"bad schema {schema!r}")  # a programming error in npgpt, not user input


def check(obj, schema, where):
    """Validate obj (parsed JSON/TOML) against schema; UserError naming `where` and the field. Returns obj."""
    _check(obj, schema, where, "")
    return obj


# ------------------------------------------------------------------ guards
def max_nesting(data):
    """Deepest bracket nesting ({ [ for JSON, also TOML inline tables/arrays) outside strings.

    data: str.  A linear scan: cheap next to parsing, and safe where the
    recursive parsers are not.  Strings are skipped ("..." with backslash
    escapes, and TOML's '...').
    """
    depth = deepest = 0
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        if c == '"' or c == "'":
            quote = c
            i += 1
            while i < n and data[i] != quote:
                i += 2 if (data[i] == "\\" and quote == '"') else 1
        elif c in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif c in "]}":
            depth -= 1
        i += 1
    return deepest


def _read_bounded(path, what, max_bytes):
    label = what or str(path)
    try:
        if os.path.isdir(path):
            raise UserError(f"{label}: is a directory, not a file")
        if os.path.exists(path) and not os.path.isfile(path):
            raise UserError(f"{label}: not a regular file")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise UserError(f"{label}: file not found") from None
    except PermissionError:
        raise UserError(f"{label}: permission denied") from None
    except OSError as e:
        raise UserError(f"{label}: cannot read ({e.strerror or type(e).__name__})") from None
    if len(data) > max_bytes:
        raise UserError(f"{label}: file is larger than {max_bytes} bytes, refused")
    return data


def _decode(data, where, max_bytes):
    if len(data) > max_bytes:
        raise UserError(f"{where}: file is larger than {max_bytes} bytes, refused")
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not UTF-8 text (byte {e.start})") from None
    if max_nesting(text) > MAX_DEPTH:
        raise UserError(f"{where}: nested more than {MAX_DEPTH} levels deep, refused")
    return text


def parse_json(data, where, schema=None, max_bytes=MAX_BYTES):
    """bytes or str -> validated JSON value; UserError naming `where` on any failure."""
    text = _decode(data, where, max_bytes)

    def no_constant(name):  # NaN / Infinity are not JSON; a crafted file must not smuggle them in
        raise ValueError(f"{name} is not valid JSON")

    try:
        obj = json.loads(text, parse_constant=no_constant)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise UserError(f"{where}: not valid JSON ({e})") from None
    return check(obj, schema, where)


def load_json(path, schema=None, what=None, max_bytes=MAX_BYTES):
    """Read, bound and validate a JSON file; `what` names it in messages (default: the path)."""
    where = what or str(path)
    return parse_json(_read_bounded(path, where, max_bytes), where, schema, max_bytes)


def parse_toml(data, where, schema=None, max_bytes=MAX_BYTES):
    """bytes or str -> validated TOML table (a dict)."""
    text = _decode(data, where, max_bytes)
    try:
        obj = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{where}: not valid TOML ({e})") from None
    except RecursionError:
        raise UserError(f"{where}: nested too deeply, refused") from None
    if _value_depth(obj) > MAX_DEPTH:  # dotted keys (a.b.c = 1) nest without brackets
        raise UserError(f"{where}: nested more than {MAX_DEPTH} levels deep, refused")
    return check(obj, schema, where)


def _value_depth(obj):
    """Nesting depth of a parsed value, computed without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def load_toml(path, schema=None, what=None, max_bytes=MAX_BYTES):
    """Read, bound and validate a TOML file."""
    where = what or str(path)
    return parse_toml(_read_bounded(path, where, max_bytes), where, schema, max_bytes)
