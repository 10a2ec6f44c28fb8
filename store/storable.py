"""One JSON parser for everything a client sends: what the store can keep, or a clear error.

Python's `json` accepts `NaN`, `Infinity`, `-Infinity`, numbers that overflow to infinity
(`1e999`) and integers of any length; SQLite's JSON functions and BSON accept none of them,
and a job stored with one could not be claimed, listed or answered. So every body and JSON
header goes through `loads` (or `check`, for bytes that pydantic parses afterwards), which
refuses them naming the field, as well as nesting deeper than MAX_DEPTH. Pure: no Flask.
"""
from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64                       # objects and arrays inside each other
INT_MIN, INT_MAX = -2**63, 2**63 - 1  # BSON's and SQLite's widest integer


class JsonError(ValueError):
    """What is wrong with a JSON document, and where (`field`: `options.temperature`, `body`)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class _Refused:
    """A value the parser met that no store can keep; found again by `_walk` to name its field."""
    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def _parse_int(text: str) -> int | _Refused:
    digits = len(text.lstrip("-"))
    if digits > 19:                   # also spares int() the work (and its 4,300-digit error)
        return _Refused(text)
    value = int(text)
    return value if INT_MIN <= value <= INT_MAX else _Refused(text)


def _parse_float(text: str) -> float | _Refused:
    value = float(text)
    return value if math.isfinite(value) else _Refused(text)


def loads(raw: bytes | str, what: str = "body") -> Any:
    """The document in `raw`, with nothing a store cannot keep; JsonError otherwise."""
    try:
        value = json.loads(raw, parse_constant=_Refused, parse_int=_parse_int, parse_float=_parse_float)
    except RecursionError:
        raise JsonError(what, f"is nested more than {MAX_DEPTH} levels deep") from None
    except UnicodeDecodeError:
        raise JsonError(what, "is not UTF-8 text") from None
    except ValueError as exc:
        raise JsonError(what, f"is not valid JSON ({exc})") from None
    _walk(value, what)
    return value


def check(raw: bytes | str, what: str = "body") -> None:
    """Raise JsonError when `raw` is JSON with something no store can keep (or not JSON)."""
    loads(raw, what)


def _walk(value: Any, root: str) -> None:
    """Find what the parser marked, naming its field: `options.temperature` in a body, and
    `X-Job-Metadata.x` in a header (`root` is what the document is)."""
    start = "" if root == "body" else root
    stack: list[tuple[Any, str, int]] = [(value, start, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, _Refused):
            name = where or root
            if item.text.lstrip("-").isdigit():
                raise JsonError(name, f"integer {_short(item.text)} is out of range ({INT_MIN} to {INT_MAX})")
            raise JsonError(name, f"must be a finite number, not {_short(item.text)}")
        if isinstance(item, str):
            _check_text(item, where or root)
        elif isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                raise JsonError(root, f"is nested more than {MAX_DEPTH} levels deep")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, inner in pairs:
                if isinstance(key, str):
                    _check_text(key, where or root)
                inner_where = f"{where}.{key}" if where else str(key)     # `messages.0.content`, as pydantic
                stack.append((inner, inner_where, depth + 1))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:          # "\ud800": valid JSON, but no UTF-8 store can keep it
        raise JsonError(where, "has a lone surrogate escape (\\ud800-\\udfff) that is not text") from None


def _short(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} characters)"


def finite(value: Any) -> Any:
    """`value` with every non-finite float as None: for figures the service itself computed (a
    rate over zero seconds), so that what it stores and answers is always valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(inner) for key, inner in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(inner) for inner in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """JSON text of `value` that any JSON reader (SQLite, a browser, jq) accepts: NaN and
    infinities written as null. The common case costs one `json.dumps`."""
    try:
        return json.dumps(value, allow_nan=False, **kwargs)
    except ValueError:
        return json.dumps(finite(value), allow_nan=False, **kwargs)
