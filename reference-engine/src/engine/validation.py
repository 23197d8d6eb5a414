"""Request bodies: strict JSON decoding (bounded nesting, finite numbers, Unicode text) and a small
JSON Schema validator, so the schemas in the OpenAPI document are the ones requests are checked
against."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

__all__ = ["Invalid", "MAX_JSON_DEPTH", "NON_BLANK", "decode_json", "validate", "request_id"]

MAX_JSON_DEPTH = 32  # nesting levels of arrays and objects; the outermost value is level 1
MAX_REQUEST_ID = 64  # characters of an X-Request-Id that are kept
# A non-blank string has a character other than ASCII whitespace. Spelled out, not `\S`: regex engines
# disagree on what `\s` covers (Python: Unicode spaces and \x1c-\x1f; JSON Schema validators and
# generators often ASCII only), and the document must mean what the Engine checks.
NON_BLANK = r"[^ \t\n\r\x0B\x0C]"

_SPECIAL = re.compile(r'[\[\]{}"]')
_STRING_TAIL = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # the rest of a string after its `"`
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class Invalid(ValueError):
    """Input that does not meet the contract; the message says what is wrong, for the client."""


def decode_json(body: bytes) -> Any:
    """Decode a UTF-8 JSON text of at most MAX_JSON_DEPTH nesting levels, with finite numbers and
    strings that are Unicode text (no lone surrogates). Raises Invalid."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("request body is not UTF-8") from None
    if _nesting_exceeds(text, MAX_JSON_DEPTH):
        raise Invalid(f"request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(text or "null", parse_constant=_no_constant)
    except Invalid:
        raise
    except (ValueError, RecursionError):
        raise Invalid("request body is not valid JSON") from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise Invalid("request body has a string with a lone surrogate (\\ud800-\\udfff): not Unicode text") from None
    return data


def _no_constant(name: str) -> Any:
    raise Invalid(f"request body is not valid JSON: {name} is not a JSON number")


def _nesting_exceeds(text: str, limit: int) -> bool:
    """True when arrays and objects nest deeper than `limit` (brackets inside strings do not count).

    Linear in the text: each string is skipped in one match, and an unterminated one ends the scan
    (the parser reports it)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, pos = 0, 0
    while (found := _SPECIAL.search(text, pos)) is not None:
        char = found.group()
        if char == '"':
            tail = _STRING_TAIL.match(text, found.end())
            if tail is None:
                return False
            pos = tail.end()
            continue
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
        pos = found.end()
    return False


# -- a JSON Schema subset ---------------------------------------------------------------------------
# type (one or a list), const, enum, minimum, maximum, minLength, maxLength, pattern, properties,
# required, additionalProperties (true/false), items, and $ref to "#/components/schemas/<name>".

_TYPE_NAMES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
               "object": "an object", "array": "an array", "null": "null"}


def _is(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if kind == "number":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and math.isfinite(value))
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    return kind == "null" and value is None


def validate(schema: Mapping[str, Any], value: Any, where: str = "",
             components: Mapping[str, Mapping[str, Any]] | None = None) -> Any:
    """`value` checked against `schema`; integral numbers where an integer is wanted come back as int.

    Raises Invalid("field 'a.b[2].c' must be ...") at the first problem."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if components is None or name not in components:
            raise LookupError(f"schema reference {schema['$ref']} is not defined")
        schema = {**components[name], **{k: v for k, v in schema.items() if k != "$ref"}}
    label = f"field {where!r}" if where else "request body"
    if "const" in schema:
        if not (type(value) is type(schema["const"]) and value == schema["const"]):
            raise Invalid(f"{label} must be {json.dumps(schema['const'])}")
        return value
    if "enum" in schema and not any(type(value) is type(v) and value == v for v in schema["enum"]):
        raise Invalid(f"{label} must be one of {', '.join(json.dumps(v) for v in schema['enum'])}")
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        kind = next((k for k in kinds if _is(k, value)), None)
        if kind is None:
            raise Invalid(f"{label} must be {_describe(schema, kinds)}")
        if kind == "integer" and isinstance(value, float):
            value = int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            raise Invalid(f"{label} must be {_describe(schema, kinds or ['number'])}")
    elif isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", math.inf):
            raise Invalid(f"{label} must be {_describe(schema, kinds or ['string'])}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise Invalid(f"{label} must be {_describe(schema, kinds or ['string'])}")
    elif isinstance(value, dict):
        return _validate_object(schema, value, where, components)
    elif isinstance(value, list) and "items" in schema:
        return [validate(schema["items"], item, f"{where}[{i}]", components) for i, item in enumerate(value)]
    return value


def _validate_object(schema: Mapping[str, Any], value: dict[str, Any], where: str,
                     components: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            raise Invalid(f"field {_join(where, name)!r} is required")
    if schema.get("additionalProperties", True) is False:
        extra = sorted(set(value) - set(properties))
        if extra:
            raise Invalid(f"field {_join(where, extra[0])!r} is not allowed here")
    out = dict(value)
    for name, sub in properties.items():
        if name in value:
            out[name] = validate(sub, value[name], _join(where, name), components)
    return out


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _describe(schema: Mapping[str, Any], kinds: list[str]) -> str:
    """What a value of `schema` is, in words: "an integer from -1 to 5 or null"."""
    nullable = "null" in kinds and len(kinds) > 1
    main = [k for k in kinds if k != "null"] if nullable else kinds
    words = " or ".join(_TYPE_NAMES.get(k, k) for k in main)
    if "integer" in main or "number" in main:
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and high is not None:
            words += f" from {low} to {high}"
        elif low is not None:
            words += f" of at least {low}"
        elif high is not None:
            words += f" of at most {high}"
    if "string" in main:
        if schema.get("pattern") == NON_BLANK:
            words = "a non-blank string"
        elif schema.get("minLength", 0) > 0 or "maxLength" in schema:
            words += f" of {schema.get('minLength', 0)} to {schema.get('maxLength', 'any number of')} characters"
    return words + (" or null" if nullable else "")


def request_id(raw: bytes | None) -> str | None:
    """The X-Request-Id to use from the header's bytes: its first MAX_REQUEST_ID characters when it
    is printable UTF-8 text, else None (the caller makes a fresh one). Never raises."""
    if not raw:
        return None
    try:
        text = raw.decode("utf-8")[:MAX_REQUEST_ID].strip()
    except UnicodeDecodeError:
        return None
    return text if text and text.isprintable() else None
