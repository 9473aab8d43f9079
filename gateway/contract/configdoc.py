"""The station config reference in Markdown, generated from the config's models.

`python -m gateway.contract.configdoc > docs/config-reference.md` regenerates the checked-in copy;
a test fails when that copy and the models disagree.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from pydantic.fields import FieldInfo

from gateway.config.models import StationConfig
from gateway.contract.spec import resolve_markers

_TYPE_NAMES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
}
_CONSTRAINTS = (
    ("gt", "> {}"),
    ("ge", ">= {}"),
    ("lt", "< {}"),
    ("le", "<= {}"),
    ("min_length", "at least {} item(s)"),
    ("pattern", "matches `{}`"),
)
_HEADER = """\
# Station config reference

<!-- Generated from gateway/config/models.py by `python -m gateway.contract.configdoc`. -->

The station config is one TOML file. Check one with `stationgw check-config FILE`;
`stationgw config-schema` prints the same keys as JSON Schema. Unknown keys are errors.
Relative paths are resolved against the config file's folder.
"""


def _toml(value: Any) -> str:
    """A default or literal value as it would be written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_toml(v)}" for k, v in value.items())
        return f"{{ {inner} }}" if inner else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _type_name(tp: Any) -> str:
    """A reader's name for a field's type: `integer`, `"P0" | "P1"`, `array of tables`."""
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Literal:
        return " | ".join(_toml(v) for v in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (types.UnionType, typing.Union):
        return " | ".join(_type_name(a) for a in args if a is not type(None))
    if origin is list:
        return "array of " + ("tables" if _submodel(args[0]) else _type_name(args[0]))
    if origin is dict:
        return f"table of {_type_name(args[0])} to {_type_name(args[1])}"
    if _submodel(tp):
        return "table"
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _submodel(tp: Any) -> type[Any] | None:
    """The model a field holds directly or as a list of tables, if it holds one."""
    if get_origin(tp) is list:
        tp = get_args(tp)[0]
    if get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    return None


def _constraints(field: FieldInfo) -> Iterator[str]:
    """Bounds, lengths and patterns declared on the field."""
    for meta in field.metadata:
        for attr, template in _CONSTRAINTS:
            value = getattr(meta, attr, None)
            if value is not None:
                yield template.format(value)


def _default(field: dataclasses.Field[Any]) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if value is None:
        return "unset"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        table = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
        if any(isinstance(v, dict | list) for v in table.values()):
            return "see section"
        value = table  # a flat table's defaults fit on one line
    return f"`{_toml(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _heading(key: str, array: bool) -> str:
    return f"`[[{key}]]`" if array else f"`[{key}]`"


def _fields(model: type[Any]) -> Iterator[tuple[dataclasses.Field[Any], FieldInfo]]:
    """Each dataclass field with what its annotation tells pydantic (alias, bounds, text)."""
    resolve_markers()
    hints = get_type_hints(model, include_extras=True)
    for field in dataclasses.fields(model):
        yield field, FieldInfo.from_annotation(hints[field.name])


def _section(model: type[Any], keys: list[str], array: bool) -> list[str]:
    """One heading and table for `model`, found at each of `keys`, then its nested tables."""
    heading = ", ".join(_heading(k, array) for k in keys) or "Top level"
    lines = [f"## {heading}", "", inspect.cleandoc(model.__doc__ or ""), ""]
    lines += ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    # Sibling tables of one model (e.g. a pattern per lamp state) share one section.
    nested: dict[tuple[type[Any], bool], list[str]] = {}
    for dc_field, field in _fields(model):
        toml_key = field.alias or dc_field.name
        sub = _submodel(field.annotation)
        description = field.description or ""
        if sub is not None:
            sub_keys = [f"{k}.{toml_key}" for k in keys] or [toml_key]
            sub_array = get_origin(field.annotation) is list
            nested.setdefault((sub, sub_array), []).extend(sub_keys)
            see = "see " + _heading(sub_keys[0], sub_array)
            description = f"{description}; {see}" if description else see
        row = (
            f"`{toml_key}`",
            f"`{_type_name(field.annotation)}`",
            _default(dc_field),
            ", ".join(_constraints(field)),
            description,
        )
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    lines.append("")
    for (sub, sub_array), sub_keys in nested.items():
        lines += _section(sub, sub_keys, sub_array)
    return lines


def render_reference() -> str:
    """Markdown documenting every key of `StationConfig`: type, default and description."""
    return _HEADER + "\n" + "\n".join(_section(StationConfig, [], array=False))


if __name__ == "__main__":
    print(render_reference(), end="")
