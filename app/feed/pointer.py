"""RFC 6901 JSON pointers over parsed JSON (dicts, lists, scalars). Pure.

Compile a pointer once with `Pointer(text)` (a ValueError names what is wrong), then:

- `pointer.get(doc)` returns the value, or `MISSING` when the document has no such place
  (distinct from a JSON null, which is `None`);
- `pointer.set(doc, value)` returns a deep copy of `doc` with the value put there (an object
  member is added or replaced; an array index may be an existing one, its length, or `-`, both of
  which append); the original is never changed. A place whose parent does not exist is a
  `LookupError`; `Pointer.check_settable(doc)` tells at start-up whether `set` can succeed;
- `pointer.put(doc, value)` is `set` without the copy, for a document the caller owns.

The empty pointer `""` is the whole document; `"/"` is the member named "" of an object.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["MISSING", "Pointer", "deep_copy"]


class _Missing:
    """The type of `MISSING`: there is no value at that place."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()

_INDEX = re.compile(r"0|[1-9][0-9]*")
_BAD_ESCAPE = re.compile(r"~(?![01])")


def _unescape(token: str) -> str:
    # ~1 first would turn "~01" into "~1" then "/"; RFC 6901 section 4 says ~1 then ~0.
    return token.replace("~1", "/").replace("~0", "~")


def deep_copy(value: Any) -> Any:
    """A copy of parsed JSON sharing no dict or list with the original (faster than deepcopy)."""
    if isinstance(value, dict):
        return {key: deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [deep_copy(item) for item in value]
    return value


class Pointer:
    """A compiled RFC 6901 pointer: `text` as given, `tokens` the unescaped reference tokens."""

    __slots__ = ("_steps", "text", "tokens")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise ValueError(f"a JSON pointer must be a string, not {type(text).__name__}")
        if text and not text.startswith("/"):
            raise ValueError(f"JSON pointer {text!r} must be empty or start with '/'")
        if _BAD_ESCAPE.search(text):
            raise ValueError(f"JSON pointer {text!r}: '~' must be followed by 0 or 1")
        self.text = text
        self.tokens: tuple[str, ...] = tuple(_unescape(t) for t in text.split("/")[1:])
        # (token, array index or -1) decided once: get() runs per frame (sequence, event_time).
        self._steps = tuple((t, int(t) if _INDEX.fullmatch(t) else -1) for t in self.tokens)

    def __repr__(self) -> str:
        return f"Pointer({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pointer) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def get(self, doc: Any) -> Any:
        """The value at this place in `doc`, or `MISSING`."""
        for token, index in self._steps:
            if isinstance(doc, dict):
                doc = doc.get(token, MISSING)
                if doc is MISSING:
                    return MISSING
            elif isinstance(doc, list):
                if not 0 <= index < len(doc):
                    return MISSING
                doc = doc[index]
            else:
                return MISSING
        return doc

    def set(self, doc: Any, value: Any) -> Any:
        """A deep copy of `doc` with `value` at this place; LookupError if its parent is absent."""
        if not self.tokens:
            return deep_copy(value)
        return self.put(deep_copy(doc), deep_copy(value))

    def put(self, doc: Any, value: Any) -> Any:
        """Put `value` at this place in `doc` itself (no copy); returns the document, which is
        `value` for the empty pointer. LookupError if the parent is absent."""
        if not self.tokens:
            return value
        _put(_parent(self).get(doc), self.tokens[-1], value, self.text)
        return doc

    def check_settable(self, doc: Any) -> None:
        """Raise ValueError unless `set(doc, ...)` can succeed (the parent exists and holds)."""
        if not self.tokens:
            return
        parent = _parent(self).get(doc)
        try:
            _put(deep_copy(parent), self.tokens[-1], None, self.text)
        except LookupError as exc:
            raise ValueError(str(exc)) from None


def _parent(pointer: Pointer) -> Pointer:
    return Pointer(pointer.text.rsplit("/", 1)[0])


def _put(parent: Any, token: str, value: Any, text: str) -> None:
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        if token == "-":
            parent.append(value)
        elif not _INDEX.fullmatch(token):
            raise LookupError(f"JSON pointer {text!r}: {token!r} is not an array index")
        elif int(token) < len(parent):
            parent[int(token)] = value
        elif int(token) == len(parent):
            parent.append(value)
        else:
            raise LookupError(f"JSON pointer {text!r}: index {token} is past the end of the array")
    elif parent is MISSING:
        raise LookupError(f"JSON pointer {text!r}: its parent does not exist")
    else:
        raise LookupError(f"JSON pointer {text!r}: its parent is not an object or array")
