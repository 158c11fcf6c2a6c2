"""Configuration problems in an operator's words (pure): one line each, naming the variable.

pydantic's messages ("Input should be a valid list", "Extra inputs are not permitted") speak
of Python types; these say what to write instead. Known names (variables, a feed's keys) are
read from the models themselves, so a field added to a model is known here at once.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

# What to call the items of a list of models in a message ("a JSON list of feeds").
ITEM_NOUNS = {"FeedSettings": "feeds"}


def variable_name(prefix: str, loc: tuple[int | str, ...]) -> str:
    """INGEST_SOURCES[0].url for ('sources', 0, 'url')."""
    if not loc:
        return ""
    head, *rest = loc
    name = prefix + str(head).upper()
    for part in rest:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


def did_you_mean(name: str, known: Iterable[str], quote: str = "") -> str:
    """' (did you mean X?)' for the closest known name, or ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {quote}{close[0]}{quote}?)" if close else ""


def unknown_variables(names: Iterable[str], prefix: str, known: Iterable[str],
                      where: str = "") -> list[str]:
    """A problem for every name with our prefix that is no known variable (case-insensitive,
    as pydantic-settings reads them); `where` says where it was found, e.g. ' (in .env)'."""
    known = sorted(known)
    lines = []
    for name in sorted(set(names)):
        upper = name.upper()
        if upper.startswith(prefix) and upper not in known:
            hint = did_you_mean(upper, known) or " (python -m app --help lists every variable)"
            lines.append(f"{name}: unknown variable{where}{hint}")
    return lines


def _unwrap(annotation: Any) -> Any:
    """list[X] for Annotated[list[X], ...] or list[X] | None."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def annotation_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> Any:
    """The type expected at `loc` inside `root` (None when the path leaves the models)."""
    annotation: Any = root
    for part in loc:
        annotation = _unwrap(annotation)
        origin = get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return None
            annotation = field.annotation
        elif origin in (list, tuple) and isinstance(part, int):
            annotation = get_args(annotation)[0]
        elif origin is dict:
            annotation = get_args(annotation)[1]
        else:
            return None
    return _unwrap(annotation)


def keys_of(model: Any) -> list[str]:
    """The keys a JSON object for `model` may hold."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _kind(value: Any) -> str:
    """A JSON value's kind, as an operator writes it."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, dict):
        return "one object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (str, int, float)):
        return repr(value)
    return "null" if value is None else type(value).__name__


def _list_noun(annotation: Any) -> str:
    args = get_args(annotation)
    item = _unwrap(args[0]) if args else None
    noun = ITEM_NOUNS.get(getattr(item, "__name__", ""))
    return f"a JSON list of {noun}" if noun else "a JSON list"


def describe(item: ErrorDetails, root: type[BaseModel]) -> tuple[tuple[int | str, ...], str]:
    """(where, what) for one pydantic error: the location to name and the operator's words."""
    loc, kind, value = tuple(item["loc"]), item["type"], item.get("input")
    ctx = item.get("ctx") or {}
    if kind == "missing":
        return loc, "required"
    if kind == "extra_forbidden":
        parent, key = loc[:-1], str(loc[-1])
        keys = keys_of(annotation_at(root, parent))
        return parent, f"unknown key {key!r}{did_you_mean(key, keys, quote=chr(39))}"
    if kind == "list_type":
        expected = _list_noun(annotation_at(root, loc))
        if isinstance(value, dict):
            return loc, f"expected {expected}, got one object: wrap it in [...]"
        return loc, f"expected {expected}, got {_kind(value)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return loc, f"expected a JSON object ({{...}}), got {_kind(value)}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return loc, f"expected a whole number, got {_kind(value)}"
    if kind in ("float_parsing", "float_type"):
        return loc, f"expected a number, got {_kind(value)}"
    if kind in ("bool_parsing", "bool_type"):
        return loc, f"expected true or false, got {_kind(value)}"
    if kind == "string_type":
        return loc, f"expected text, got {_kind(value)}"
    if kind == "literal_error":
        return loc, f"must be {ctx.get('expected')}, got {_kind(value)}"
    limits = {"greater_than": "greater than", "greater_than_equal": "at least",
              "less_than": "less than", "less_than_equal": "at most"}
    if kind in limits:
        bound = next(iter(ctx.values()), "")
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return loc, f"must be {limits[kind]} {bound}, got {value}"
    return loc, item["msg"].removeprefix("Value error, ")


def problems(error: ValidationError, root: type[BaseModel], prefix: str) -> list[str]:
    """One line per problem; model-level checks already name their variables, one per line."""
    lines = []
    for item in error.errors():
        where, message = describe(item, root)
        name = variable_name(prefix, where)
        lines.extend(message.splitlines() if not name else [f"{name}: {message}"])
    return lines


def names_variable(line: str, variable: str) -> bool:
    """Whether a problem line is about `variable` (INGEST_SINK_URL, not INGEST_SINK_URLS)."""
    return re.search(rf"(?<![A-Z_]){re.escape(variable)}(?![A-Z_])", line) is not None
