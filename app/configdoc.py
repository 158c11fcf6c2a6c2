"""The INGEST_* variables as an operator reads them: `--help`'s list and the README's table.

Both are generated from the Settings model (each field's docstring is its line), so neither can
drift from what the service reads. `python -m app.configdoc` prints the README table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic_core import PydanticUndefined

from app.settings import ENV_PREFIX, Settings


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, its default as written in an env file, one line."""

    name: str
    default: str
    meaning: str


def render_default(value: object) -> str:
    """A default as an operator would write it: `required`, `unset`, or the value itself."""
    if value is PydanticUndefined:
        return "required"
    if value is None or value == []:  # an empty list of feeds is written as nothing at all
        return "unset"
    return value if isinstance(value, str) else json.dumps(value)


def variables() -> list[Variable]:
    """Every variable of the Settings model, in its order."""
    found = []
    for name, field in Settings.model_fields.items():
        default = (PydanticUndefined if field.is_required()
                   else field.get_default(call_default_factory=True))
        found.append(Variable(ENV_PREFIX + name.upper(), render_default(default),
                              field.description or ""))
    return found


def help_text() -> str:
    """The variables section of `python -m app --help`."""
    lines = ["configuration (environment variables; also read from ./.env or --env-file;",
             "config/example.env has every variable with a comment):"]
    for variable in variables():
        if variable.default in ("required", "unset"):
            lines.append(f"  {variable.name} ({variable.default})")
        else:
            lines.append(f"  {variable.name}={variable.default}")
        lines.append(f"      {variable.meaning}")
    return "\n".join(lines)


def markdown_table() -> str:
    """The README's configuration table (meanings may then be written out at more length)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for variable in variables():
        default = "required" if variable.default == "required" else (
            "—" if variable.default == "unset" else f"`{variable.default}`")
        rows.append(f"| `{variable.name}` | {default} | {variable.meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
