"""The strict parsers of what a client sends: integers, text and file names, one parser per kind.

Python's own `int()` and `str.isdigit()` take any Unicode digit ('²', '٣', '１'), `int()` takes any size,
and a JSON string may hold a lone surrogate ("\\ud800") that no UTF-8 encoder, database or file system
takes. Every surface (the service, /api/v1, the hub dialects, the CLI) parses client input through
these instead, so a hostile value is a refusal of the error tree (a 4xx), never a crash deep inside:

    natural(text, what)         a non-negative integer written in ASCII digits, at most `maximum`
    revision_number(text)       1 .. INT32_MAX, no leading zero (revisions.number is INTEGER everywhere)
    flag(text, what)            a boolean query parameter: true/false, 1/0, yes/no, on/off, any case
    text(value, what)           a string without NUL or lone surrogates (PostgreSQL, UTF-8, file names)
    unstorable(value)           why a JSON value (its strings and keys, at any depth) cannot be stored
    file_name(part, path)       one path component: valid UTF-8, at most NAME_MAX bytes

File names: NAME_MAX is every file system's limit on one component, in bytes of UTF-8. Writers that
put a temporary file beside a named one (registry/atomic.py, the store's copy_to) cut the name inside
the temporary name to fit (`temp_name`), so every legal name can also be written back out.
"""
from __future__ import annotations

import os
import re
from typing import Any

from .errors import InvalidIdError, RegistryError, UnsafePathError

#: The largest value of an INTEGER column (revisions.number, jobs.id) on SQLite and PostgreSQL alike.
INT32_MAX = 2**31 - 1
#: The largest value of a BIGINT (byte counts, offsets).
INT64_MAX = 2**63 - 1
#: The longest page a listing hands out at once; a longer `limit` is refused rather than silently cut.
MAX_PAGE = 10_000
#: The longest name of one path component, in bytes (UTF-8), on the file systems the registry writes to.
NAME_MAX = 255

DIGITS = re.compile(r"[0-9]+", re.ASCII)
_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})
#: NUL (PostgreSQL text cannot hold it; C file APIs end at it) and lone UTF-16 surrogates (not encodable).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def natural(value: str, what: str, *, maximum: int = INT64_MAX,
            error: type[RegistryError] = RegistryError) -> int:
    """`value` as a non-negative integer: ASCII digits only, at most `maximum`; else `error` naming `what`."""
    if not isinstance(value, str) or not DIGITS.fullmatch(value):
        raise error(f"{what} must be a non-negative integer in ASCII digits, not {_shown(value)}")
    digits = value.lstrip("0") or "0"  # int() refuses over 4,300 digits, leading zeros included
    if len(digits) > len(str(maximum)) or int(digits) > maximum:
        raise error(f"{what} {_shown(value)} is out of range: at most {maximum}")
    return int(digits)


def is_revision_number(value: str) -> bool:
    """Whether `value` is written as a revision number (ASCII digits), whatever its range."""
    return DIGITS.fullmatch(value) is not None


def revision_number(value: str) -> int:
    """A revision number: 1 .. INT32_MAX in ASCII digits without a leading zero, else InvalidIdError."""
    number = natural(value, "revision number", maximum=INT32_MAX, error=InvalidIdError)
    if number < 1 or value != str(number):
        raise InvalidIdError(f"revision number {_shown(value)} must be a positive integer without leading zeros")
    return number


def flag(value: str, what: str, *, error: type[RegistryError] = RegistryError) -> bool:
    """A boolean query parameter, spelled as the clients spell them (true/false, True/False, 1/0, yes/no, on/off)."""
    word = value.lower() if isinstance(value, str) else ""
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise error(f"{what} must be true or false, not {_shown(value)}")


def text(value: str, what: str, *, error: type[RegistryError] = RegistryError) -> str:
    """`value` unchanged if it holds neither NUL nor a lone surrogate; else `error` naming `what`."""
    problem = _problem(value)
    if problem is not None:
        raise error(f"{what} {problem}")
    return value


def unstorable(value: Any) -> str | None:
    """Why a JSON value cannot be stored (a string or key with NUL or a lone surrogate), or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            problem = _problem(item)
            if problem is not None:
                return f"a string in the request {problem}"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return None


def file_name(part: str, path: str) -> str:
    """One component of the file path `path`: valid UTF-8 and at most NAME_MAX bytes, else UnsafePathError."""
    if _UNSTORABLE.search(part):
        raise UnsafePathError(f"file name {_shown(path, 200)} is not valid UTF-8 text (or holds NUL)")
    size = len(part.encode())
    if size > NAME_MAX:
        raise UnsafePathError(f"file name {_shown(path, 200)}: the component {_shown(part, 60)} is {size} bytes "
                              f"in UTF-8; a file system takes at most {NAME_MAX}")
    return part


def temp_name(name: str, tag: str) -> str:
    """`.{name}.{tag}`, the name of a temporary file beside `name`, with `name` cut so the whole fits NAME_MAX."""
    cut = os.fsencode(name)[:max(NAME_MAX - len(os.fsencode(tag)) - 2, 0)]
    for end in range(len(cut), max(len(cut) - 4, -1), -1):  # never half a character
        try:
            return f".{cut[:end].decode()}.{tag}"
        except UnicodeDecodeError:
            continue
    return f".{os.fsdecode(cut)}.{tag}"


def _problem(value: str) -> str | None:
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character"
    return "contains a lone surrogate (not valid Unicode text)"


def _shown(value: object, limit: int = 40) -> str:
    """A value for a message: repr, cut, and safe to encode (a lone surrogate shown as its escape)."""
    shown = repr(value if not isinstance(value, str) or len(value) <= limit else value[:limit] + "...")
    return shown.encode("utf-8", "backslashreplace").decode("utf-8")
