"""A wrong backout.toml in a person's words: the file, the line, the key as written in TOML, what is wrong
and what to do.

TOML parsers give values, not positions, so `key_lines` reads the source once more and notes the line
where each table and key is written. The validation errors are then turned into sentences: an unknown key
gets the nearest valid key at its place, a wrong value says what it should be, and a message of our own
validators is kept as it is.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
import types
from typing import Annotated, Any, Iterable, Iterator, Sequence, Union, get_args, get_origin

from pydantic import BaseModel

__all__ = ["MAX_LISTED", "KeyProblem", "NestedErrors", "describe_not_toml", "describe_not_utf8",
           "describe_problems", "key_lines", "toml_path"]

MAX_LISTED = 10  # problems listed one by one; the rest are counted

Loc = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_NO_DEPLOYMENTS = 'no deployments; add a [deployments.NAME] table with brain = "PATH", or write one with `backout init`'


class NestedErrors(ValueError):
    """Raised by a validator that validates a part of the config with a model of its own (the service
    profile): its errors are reported at their own keys, not as one message."""

    def __init__(self, errors: Sequence[Any], message: str) -> None:
        super().__init__(message)
        self.errors = list(errors)


class KeyProblem(ValueError):
    """Raised by a model validator about one key of its table, so the error points at that key's line."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


# -- where each key is written --------------------------------------------------------------------------

def key_lines(text: str) -> dict[Loc, int]:
    """The line (1-based) where each table and key of a TOML document is first written, by key path as the
    validation reports it: ("deployments", "engine", "brain"); the k-th [[array.table]] is index k-1.
    Keys inside inline tables and arrays are not listed: their key's line is the place to look."""
    lines: dict[Loc, int] = {}
    arrays: dict[Loc, int] = {}  # [[array.table]] path -> how many seen so far
    table: Loc = ()
    pos, line, end = 0, 1, len(text)
    while pos < end:
        char = text[pos]
        if char == "\n":
            line += 1
            pos += 1
        elif char in " \t\r":
            pos += 1
        elif char == "#":
            pos = _line_end(text, pos)
        elif char == "[":
            double = text.startswith("[[", pos)
            keys, pos = _keys(text, pos + (2 if double else 1))
            pos = _skip_blanks(text, pos) + (2 if double else 1)  # past ] or ]]
            table = _table_loc(keys, double, arrays)
            for k in range(1, len(table) + 1):
                lines.setdefault(table[:k], line)
        else:
            keys, pos = _keys(text, pos)
            full = table + tuple(keys)
            for k in range(len(table) + 1, len(full) + 1):
                lines.setdefault(full[:k], line)
            pos, line = _skip_value(text, _skip_blanks(text, pos) + 1, line)  # past the "="
    return lines


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _keys(text: str, pos: int) -> tuple[list[str], int]:
    """A dotted key (bare, "basic" or 'literal' parts) starting at `pos`; returns its parts and the position
    after it."""
    keys: list[str] = []
    while True:
        pos = _skip_blanks(text, pos)
        if pos < len(text) and text[pos] == '"':
            close = _string_end(text, pos + 1, '"')
            raw = text[pos:close]
            try:
                keys.append(json.loads(raw))
            except ValueError:
                keys.append(raw[1:-1])
            pos = close
        elif pos < len(text) and text[pos] == "'":
            close = text.find("'", pos + 1)
            close = len(text) if close < 0 else close
            keys.append(text[pos + 1:close])
            pos = close + 1
        else:
            match = _BARE_KEY.match(text, pos)
            if match is None:
                return keys, pos
            keys.append(match.group())
            pos = match.end()
        pos = _skip_blanks(text, pos)
        if pos < len(text) and text[pos] == ".":
            pos += 1
        else:
            return keys, pos


def _string_end(text: str, pos: int, quote: str) -> int:
    """The position just after the closing `quote` of a one-line string whose content starts at `pos`."""
    while pos < len(text) and text[pos] != "\n":
        if text[pos] == "\\" and quote == '"':
            pos += 2
            continue
        if text[pos] == quote:
            return pos + 1
        pos += 1
    return pos


def _table_loc(keys: list[str], array: bool, arrays: dict[Loc, int]) -> Loc:
    """A header's key path with the index of each [[array table]] on the way (the one being opened: a new
    element)."""
    loc: list[str | int] = []
    for i, key in enumerate(keys):
        loc.append(key)
        here = tuple(loc)
        if array and i == len(keys) - 1:
            arrays[here] = arrays.get(here, 0) + 1
        if here in arrays:
            loc.append(arrays[here] - 1)
    return tuple(loc)


def _skip_value(text: str, pos: int, line: int) -> tuple[int, int]:
    """Past a value (strings, multi-line strings, arrays and inline tables over several lines, a trailing
    comment) and the end of its line; returns the new position and line number."""
    depth = 0
    while pos < len(text):
        char = text[pos]
        if text.startswith('"""', pos) or text.startswith("'''", pos):
            quote = text[pos]
            pos += 3
            while pos < len(text) and not text.startswith(quote * 3, pos):
                if text[pos] == "\\" and quote == '"':
                    pos += 1
                line += text[pos] == "\n" if pos < len(text) else 0
                pos += 1
            pos += 3
            while pos < len(text) and text[pos] == quote:  # up to two quotes may end the content
                pos += 1
            continue
        if char in "\"'":
            pos = _string_end(text, pos + 1, char)
            continue
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "#":
            pos = _line_end(text, pos)
            continue
        elif char == "\n":
            line += 1
            if depth <= 0:
                return pos + 1, line
        pos += 1
    return pos, line


def toml_path(loc: Iterable[str | int]) -> str:
    """A key path as written in TOML: deployments."engine.eu".snapshots, with [n] for the n-th array item."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + (part if _BARE_KEY.fullmatch(part) else json.dumps(part))
    return out


def _line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of the key, or of the nearest enclosing key or table that is written in the file."""
    for k in range(len(loc), 0, -1):
        if loc[:k] in lines:
            return lines[loc[:k]]
    return None


# -- the file cannot be read as TOML ---------------------------------------------------------------------

def describe_not_utf8(path: object, data: bytes, exc: UnicodeDecodeError) -> str:
    """A config that is not UTF-8: where the first bad byte is."""
    start = exc.start
    line = data.count(b"\n", 0, start) + 1
    line_start = data.rfind(b"\n", 0, start) + 1
    column = len(data[line_start:start].decode("utf-8", "replace")) + 1
    return (f"{path}:{line}: the file is not UTF-8 text (byte 0x{data[start]:02x} at column {column}); "
            "save it as UTF-8, as TOML requires")


_TOML_WORDS: list[tuple[str, str]] = [
    (r"Expected '\]' at the end of a table declaration", "a table header is not closed with ']'"),
    (r"Expected '\]\]' at the end of an array declaration", "a [[table]] header is not closed with ']]'"),
    (r"Cannot overwrite a value", "a key is set twice (or a key and a table have the same name); keep one"),
    (r"Illegal character '\\n'", "a string is not closed with its quote before the line ends"),
    (r"Illegal character (.*)", r"the character \1 is not allowed here; write control characters as escapes"),
    (r"Unterminated string", "a string is not closed with its quote"),
    (r"Unclosed array", "a list is not closed with ']'"),
    (r"Unclosed inline table", "an inline table is not closed with '}' (it must fit on one line)"),
    (r"Expected '=' after a key in a key/value pair", "a key has no '= value' after it"),
    (r"Invalid statement", "this line is neither a [table] header nor key = value"),
    (r"Invalid initial character for a key part",
     "a key starts with a character keys cannot start with; quote it, or use letters, digits, _ and -"),
    (r"Duplicate inline table key '(.*)'", r"the key \1 is set twice in an inline table"),
    (r"Unescaped '\\' in a string",
     "a backslash in a \"...\" string must be doubled (\\\\), or write the text in '...' quotes"),
    (r"Cannot (?:mutate immutable|redefine) namespace .*",
     "a table written as a value ({ ... }) cannot be extended elsewhere; write it in one place"),
    (r"Invalid date or datetime", "the date or time is not valid"),
    (r"Invalid hex value|Escaped character is not a Unicode scalar value",
     "a \\u escape in a string is not a valid character"),
    (r"Invalid value", "the value is not TOML; text needs quotes (\"...\"), a list brackets, "
                       "and true and false are lower case"),
]


def describe_not_toml(path: object, text: str, message: str) -> str:
    """tomllib's error ("Invalid value (at line 2, column 14)") in our words, with the file and line."""
    match = re.fullmatch(r"(.*) \(at (?:line (\d+), column (\d+)|end of document)\)", message, re.S)
    if match is None:
        return f"{path}: not valid TOML: {message}; fix it and run the command again"
    what = match[1]
    if match[2]:
        line, at = int(match[2]), f"at column {match[3]}"
    else:
        line, at = max(1, len(text.splitlines())), "at the end of the file"
    sentence = what[:1].lower() + what[1:]
    declared = re.fullmatch(r"Cannot declare (\(.*\)) twice", what)
    if declared:
        try:
            sentence = f"the table [{toml_path(ast.literal_eval(declared[1]))}] is declared twice; merge the two"
        except (ValueError, SyntaxError):
            pass
    elif what == "Invalid value" and not match[2]:
        sentence = "the file ends inside a value; is a ']', '}' or a quote missing?"
    else:
        for pattern, words in _TOML_WORDS:
            if re.fullmatch(pattern, what, re.S):
                sentence = re.sub(pattern, words, what, count=1, flags=re.S)
                break
    return f"{path}:{line}: not valid TOML {at}: {sentence}; fix it and run the command again"


# -- the values do not fit the model ---------------------------------------------------------------------

def describe_problems(path: object, text: str, errors: Sequence[Any], root: type[BaseModel]) -> str:
    """Validation errors of `root` for the TOML document `text`: one line each (file:line: key: sentence),
    in the order of the file, up to MAX_LISTED, then how many in all."""
    lines = key_lines(text)
    flat = _merge_unions(root, list(_flatten(errors)))
    suggested = {(loc[:-1], near) for loc, kind, _, _, _ in flat if kind == "extra_forbidden"
                 for near in [_nearest(root, loc)] if near}
    problems: list[tuple[int, str]] = []
    for loc, kind, value, ctx, msg in flat:
        if kind == "missing" and (loc[:-1], loc[-1]) in suggested:
            continue  # `pth` for `path`: "did you mean path?" says it already
        sentence, with_key = _sentence(root, loc, kind, value, ctx, msg)
        line = _line_of(lines, loc)
        where = f"{path}:{line}" if line else f"{path}"
        entry = f"{where}: {toml_path(loc)}: {sentence}" if with_key and loc else f"{where}: {sentence}"
        if all(entry != seen for _, seen in problems):
            problems.append((line or 0, entry))
    problems.sort(key=lambda p: p[0])
    if len(problems) == 1:
        return problems[0][1]
    listed = [f"  {entry}" for _, entry in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        listed.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join([f"{path} has problems:", *listed,
                      f"{len(problems)} problems in all; fix them and run the command again"])


def _flatten(errors: Iterable[Any]) -> Iterator[tuple[Loc, str, Any, dict[str, Any], str]]:
    """(loc, type, input, ctx, msg) of each error, the errors of a nested validation at their own keys."""
    for error in errors:
        loc: Loc = tuple(error.get("loc", ()))
        ctx = dict(error.get("ctx") or {})
        cause = ctx.get("error")
        if isinstance(cause, NestedErrors):
            for inner in _flatten(cause.errors):
                yield (loc + inner[0],) + inner[1:]
            continue
        if isinstance(cause, KeyProblem):
            loc = loc + (cause.key,)
        yield loc, error.get("type", ""), error.get("input"), ctx, error.get("msg", "")


def _merge_unions(root: type[BaseModel], flat: list[tuple[Loc, str, Any, dict[str, Any], str]]
                  ) -> list[tuple[Loc, str, Any, dict[str, Any], str]]:
    """A value that fits none of the types of a union (a body that is a table or a list) gets one error at
    its key, not one per type named after the type ("dict[str,any]")."""
    merged: list[tuple[Loc, str, Any, dict[str, Any], str]] = []
    kinds: dict[Loc, list[str]] = {}
    for loc, kind, value, ctx, msg in flat:
        tag = _union_tag(root, loc)
        if tag is None:
            merged.append((loc, kind, value, ctx, msg))
            continue
        at = loc[:tag]
        if at not in kinds:
            kinds[at] = []
            merged.append((at, "union", value, {"kinds": kinds[at]}, msg))
        word = _type_word(str(loc[tag]))
        if word not in kinds[at]:
            kinds[at].append(word)
    return merged


def _union_tag(root: type[BaseModel], loc: Loc) -> int | None:
    """Where in `loc` the validation named a member of a union type, if it did."""
    for i in range(1, len(loc)):
        tp = _raw_type_at(root, loc[:i])
        while get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        if tp is None:
            return None
        if get_origin(tp) in (Union, types.UnionType) and len([a for a in get_args(tp) if a is not type(None)]) > 1:
            return i
    return None


def _raw_type_at(root: type[BaseModel], loc: Loc) -> Any:
    """The declared type at `loc`, unions and all."""
    parent = _type_at(root, loc[:-1])
    model = _model(parent)
    if model is not None:
        field = model.model_fields.get(str(loc[-1]))
        return field.annotation if field is not None else None
    if get_origin(parent) is dict:
        return get_args(parent)[1]
    if get_origin(parent) is list:
        return get_args(parent)[0]
    return None


def _type_word(tag: str) -> str:
    for prefix, word in (("dict", "a table"), ("list", "a list"), ("str", "text"), ("int", "a whole number"),
                         ("float", "a number"), ("bool", "true or false")):
        if tag.startswith(prefix):
            return word
    return "a table"


def _unwrap(tp: Any) -> Any:
    """X for Annotated[X, ...] and X | None (the first model, or the first type, of a union)."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            models = [a for a in args if _model(a) is not None]
            tp = models[0] if models else args[0]
        else:
            return tp


def _model(tp: Any) -> type[BaseModel] | None:
    """The model whose keys a value of type `tp` takes (a model may name another one's keys as its own)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return getattr(tp, "_keys_of", None) or tp
    return None


def _type_at(root: type[BaseModel], loc: Loc) -> Any:
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        model = _model(tp)
        if model is not None:
            field = model.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) is list:
            tp = get_args(tp)[0]
        else:
            return None
    return _unwrap(tp)


def _keys_at(root: type[BaseModel], loc: Loc) -> list[str]:
    model = _model(_type_at(root, loc))
    return list(model.model_fields) if model is not None else []


def _nearest(root: type[BaseModel], loc: Loc, cutoff: float = 0.6) -> str | None:
    near = difflib.get_close_matches(str(loc[-1]), _keys_at(root, loc[:-1]), n=1, cutoff=cutoff)
    return near[0] if near else None


def _table(loc: Loc) -> str:
    return f"[{toml_path(loc)}]" if loc else "the top of the file"


def _unknown(root: type[BaseModel], loc: Loc, value: Any) -> str:
    key, where = str(loc[-1]), loc[:-1]
    keys = _keys_at(root, where)
    if not keys:
        return "unknown key; remove it"
    near = _nearest(root, loc, cutoff=0.8)
    if near:
        return f"unknown key; did you mean {near}?"
    homes = [name for name in keys if key in _keys_at(root, where + (name,))]
    if homes:
        return f"unknown key here; it belongs in {' or '.join(_table(where + (h,)) for h in homes[:3])}"
    near = _nearest(root, loc)
    if near:
        return f"unknown key; did you mean {near}?"
    if not where and isinstance(value, dict) and "deployments" in keys:
        return (f"unknown key; a deployment's settings go under [deployments.{toml_path([key])}] "
                f"(the keys at the top are {', '.join(keys)})")
    where_words = f"of {_table(where)}" if where else "at the top"
    return f"unknown key; the keys {where_words} are {', '.join(keys)}"


def _show(value: Any) -> str:
    """A value as a person wrote it, short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    shown = repr(value) if isinstance(value, str) else str(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _example_number(root: type[BaseModel], loc: Loc, whole: bool) -> str:
    model = _model(_type_at(root, loc[:-1]))
    field = model.model_fields.get(str(loc[-1])) if model is not None else None
    default = field.default if field is not None else None
    if isinstance(default, (int, float)) and not isinstance(default, bool) and default:
        return str(default)
    return "10" if whole else "0.5"


def _sentence(root: type[BaseModel], loc: Loc, kind: str, value: Any, ctx: dict[str, Any],
              msg: str) -> tuple[str, bool]:
    """What is wrong, and what to do; and whether the key path goes before it."""
    key = next((str(p) for p in reversed(loc) if isinstance(p, str)), "")
    if loc == ("deployments",) and kind in ("missing", "too_short"):
        return _NO_DEPLOYMENTS, False
    if kind == "extra_forbidden":
        return _unknown(root, loc, value), True
    if kind == "missing":
        return f"required key missing; add {key} = ... to {_table(loc[:-1])}", True
    if kind == "too_short":
        return "must not be empty", True
    if kind == "literal_error":
        choices = re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", "")))
        sentence = f"{_show(value)} is not one of {', '.join(repr(c) for c in choices)}"
        near = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
        return sentence + (f"; did you mean {near[0]!r}?" if near else ""), True
    if kind in ("bool_parsing", "bool_type"):
        return f"{_show(value)} is not true or false; write {key} = true or {key} = false (without quotes)", True
    if kind in ("int_parsing", "int_type", "int_from_float", "float_parsing", "float_type"):
        whole = kind.startswith("int")
        how = "write it without quotes" if isinstance(value, str) else "write one"
        example = _example_number(root, loc, whole)
        return (f"{_show(value)} is not {'a whole number' if whole else 'a number'}; {how}, "
                f"e.g. {key} = {example}"), True
    bounds = {"greater_than": ("more than", "gt"), "greater_than_equal": ("at least", "ge"),
              "less_than": ("less than", "lt"), "less_than_equal": ("at most", "le")}
    if kind in bounds:
        words, name = bounds[kind]
        return f"must be {words} {_show(ctx.get(name))} (it is {_show(value)})", True
    if kind in ("string_type", "path_type"):
        return f"{_show(value)} is not text; put it in quotes", True
    if kind in ("list_type", "tuple_type", "set_type"):
        example = json.dumps(value) if isinstance(value, (str, int, float)) else "..."
        return f"{_show(value)} is not a list; write it in brackets, e.g. {key} = [{example}]", True
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return (f"{_show(value)} is not a table; write {_table(loc)} with its keys below it, "
                f"or {key} = {{ ... }}"), True
    if kind == "union":
        return f"{_show(value)} is not {' or '.join(ctx['kinds'])}", True
    if kind in ("value_error", "assertion_error") and ctx.get("error") is not None:
        return str(ctx["error"]), True
    sentence = re.sub(r"^(Value error|Assertion failed), ", "", msg).replace("Input should be", "must be")
    return sentence[:1].lower() + sentence[1:], True
