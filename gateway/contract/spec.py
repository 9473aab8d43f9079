"""pydantic for checking and documenting the contract and the config, never in the daemon.

The daemon must stay small (issue 2: RSS at most 40 MB), and pydantic with the schemas it
builds costs about 11 MiB of it. So the station config, the dispatch command and the
message bodies are plain frozen dataclasses and TypedDicts. Their annotations are strings
(`from __future__ import annotations`) that carry pydantic's `Field` and `AfterValidator`,
imported there only for type checkers. pydantic evaluates them here, and only in the
processes that need it: `stationgw check-config`, the short-lived child that checks the
config when the daemon starts (`gateway.config.loading.load_config_isolated`), the contract
(`gateway.contract.asyncapi`), the dispatch console and the tests.

The daemon's own checks of what arrives at run time
(`gateway.core.commands.parse_command`) are plain code, and the tests prove that they
accept and refuse what the pydantic spec does.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import pydantic
from pydantic import TypeAdapter

#: Modules whose string annotations name pydantic's markers.
SPEC_MODULES = (
    "gateway.config.models", "gateway.core.model", "gateway.core.commands",
    "gateway.uplink.reports",
)
_MARKERS = ("AfterValidator", "Field", "ValidationInfo")


def resolve_markers() -> None:
    """Put pydantic's markers where the spec modules' annotations are evaluated."""
    for name in SPEC_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        for marker in _MARKERS:
            module.__dict__.setdefault(marker, getattr(pydantic, marker))


@functools.cache
def adapter(tp: Any) -> TypeAdapter[Any]:
    """The pydantic validator, serializer and JSON Schema of a spec type (built once)."""
    resolve_markers()
    return TypeAdapter(tp)
