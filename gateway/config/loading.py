"""Reading the station config: TOML in, checked models out, every problem with its key path.

pydantic checks the models (`gateway.contract.spec`) and `gateway.config.checks` the keys
that depend on each other; all problems are raised together in one `ConfigError`. The
daemon checks its config in a short-lived child process (`load_config_isolated`), so that
pydantic's memory never enters the long-running process.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

from gateway.config.checks import cross_check
from gateway.config.models import ID_HELP, BrokerEndpoint, StationConfig, masked_url
from gateway.errors import ConfigError, GatewayError


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "str", "[key]") or part.startswith(("function-after", "literal")):
            continue  # pydantic's union-branch labels are not config keys
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _fix(err: Any) -> str:
    kind = err["type"]
    if kind in ("missing", "missing_keyword_argument"):
        return "add this key"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return "remove it or fix its spelling"
    if kind == "string_pattern_mismatch":
        return ID_HELP
    return ""


#: pydantic's words for a dataclass's keys, as it says them for a model's (the config's file
#: has keys, not keyword arguments).
_KEY_MESSAGES = {
    "missing_keyword_argument": "Field required",
    "unexpected_keyword_argument": "Extra inputs are not permitted",
}


def _format(err: Any) -> str:
    msg = _KEY_MESSAGES.get(err["type"]) or str(err["msg"]).removeprefix("Value error, ")
    fix = _fix(err)
    missing = err["type"] in ("missing", "missing_keyword_argument")
    shown = err.get("input")
    if err["loc"] and err["loc"][-1] == "url" and isinstance(shown, str):
        shown = masked_url(shown)  # never echo a password
    value = "" if missing else f" (got {shown!r})"
    return f"{_path(err['loc'])}: {msg}{value}" + (f" ({fix})" if fix else "")


def parse_config(raw: dict[str, Any], base_dir: Path | None = None) -> StationConfig:
    """Validate raw config data; raise ConfigError listing every problem found."""
    from pydantic import ValidationError  # noqa: PLC0415 - never in the daemon (module doc)

    from gateway.contract.spec import adapter  # noqa: PLC0415

    problems: list[str] = []
    config: StationConfig | None = None
    try:
        config = adapter(StationConfig).validate_python(raw, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems.extend(_format(err) for err in exc.errors())
    problems.extend(cross_check(raw))
    if problems or config is None:
        raise ConfigError(problems)
    return config


def load_config(
    path: Path, *, broker: str | None = None, store: Path | None = None
) -> StationConfig:
    """Read and validate a station config file, then apply a technician's overrides.

    `broker` replaces the file's broker endpoints with one URL and `store` the outbox path
    (`stationgw run --broker/--store`).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: config file is not UTF-8 text ({exc.reason})"]) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc} (fix the syntax there)"]) from exc
    config = parse_config(raw, base_dir=path.resolve().parent)
    if broker is not None:
        config = dataclasses.replace(config, brokers=[_broker_override(broker)])
    if store is not None:
        config = dataclasses.replace(config, store=dataclasses.replace(config.store, path=store))
    return config


def _broker_override(url: str) -> BrokerEndpoint:
    from pydantic import ValidationError  # noqa: PLC0415 - never in the daemon (module doc)

    from gateway.contract.spec import adapter  # noqa: PLC0415

    try:
        endpoint: BrokerEndpoint = adapter(BrokerEndpoint).validate_python({"url": url})
    except ValidationError as exc:
        msgs = [str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()]
        raise ConfigError([f"--broker: {m}" for m in msgs]) from exc
    return endpoint


def load_config_isolated(
    path: Path, *, broker: str | None = None, store: Path | None = None
) -> StationConfig:
    """`load_config` in a forked child, so that pydantic never loads into this process.

    The child checks the file with pydantic and sends back the validated dataclasses (or
    the problems) through a pipe, pickled; it is our own child, so the pickle is trusted.
    A process that already has pydantic, or runs threads (fork would copy their locks
    mid-use), checks the file itself.
    """
    if "pydantic" in sys.modules or threading.active_count() > 1:
        return load_config(path, broker=broker, store=store)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(read_fd)
            try:
                result: tuple[str, Any] = ("ok", load_config(path, broker=broker, store=store))
            except ConfigError as err:
                result = ("problems", err.problems)
            with os.fdopen(write_fd, "wb") as pipe:
                pickle.dump(result, pipe, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:  # noqa: BLE001 - report anything, then leave without cleanup
            import traceback  # noqa: PLC0415

            traceback.print_exc()
            code = 70  # EX_SOFTWARE
        finally:
            os._exit(code)  # no atexit handlers, no flush of the parent's buffers
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not data:
        raise GatewayError(f"checking the config in a child process failed (exit code {code})")
    kind, value = pickle.loads(data)  # noqa: S301 - our own child's output (docstring)
    if kind == "problems":
        raise ConfigError(value)
    if not isinstance(value, StationConfig):
        raise GatewayError(f"the config check process sent a {type(value).__name__}")
    return value


def config_schema() -> dict[str, Any]:
    """JSON Schema of the station config file."""
    from gateway.contract.spec import adapter  # noqa: PLC0415

    schema: dict[str, Any] = adapter(StationConfig).json_schema(by_alias=True)
    return schema
