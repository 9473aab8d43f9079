"""The station config: one TOML file, typed frozen models, validated once at start.

- `models`: the frozen dataclasses, one per table, with pydantic's constraints in their
  annotations (the daemon reads them; pydantic never loads in it);
- `checks`: the problems that span several keys;
- `loading`: TOML in, models out, every problem with its key path and fix (exit 78).

The reference, docs/config-reference.md, is generated from the models by
`gateway.contract.configdoc`.
"""
