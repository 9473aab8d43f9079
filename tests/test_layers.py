"""The layers the code is built in, checked from its imports (read with `ast`, nothing run).

- The sans-I/O core (state machines, codecs, the clock, the contract's models) does no I/O:
  no asyncio, sockets, MQTT, serial, SQLite, GPIO or threads. It is tested by feeding it
  values, as presses.py and the firmware codec are.
- The firmware bridge stands alone: it never imports the gateway or the dispatch side.
- The uplink (MQTT client, publisher, topics, retained reports) never reaches back into the
  inputs or the station's help-point logic.
- Nothing the daemon imports, however indirectly, is the dispatch side, test support, the
  contract generator or the demo.
- Tests share code through conftest.py, tests/helpers.py and gateway/testing, never by
  importing another test module; and bench.run_all runs every benchmark.

The issue 13 layout (inputs never import the station or the outbox) does not hold yet:
helppoints.py and boards.py still reach the outbox and the lifecycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bench.run_all import BENCHES

ROOT = Path(__file__).resolve().parent.parent
IO_MODULES = {"asyncio", "socket", "selectors", "ssl", "paho", "aiomqtt", "serial",
              "serial_asyncio_fast", "sqlite3", "gpiozero", "threading", "subprocess"}
SANS_IO = [
    "gateway/alerts.py", "gateway/clock.py", "gateway/commands.py", "gateway/flood.py",
    "gateway/lamp.py", "gateway/model.py", "gateway/presses.py", "gateway/sensors.py",
    "gateway/spec.py", "gateway/topics.py",
    "firmware_bridge/backoff.py", "firmware_bridge/codec.py", "firmware_bridge/errors.py",
    "firmware_bridge/frames.py", "firmware_bridge/protocol.py", "firmware_bridge/sequence.py",
]
UPLINK = ["gateway/mqtt.py", "gateway/publisher.py", "gateway/topics.py", "gateway/reports.py"]
INPUTS_AND_STATION = {"gateway.helppoints", "gateway.boards", "gateway.simulate",
                      "gateway.sensors", "gateway.presses", "gateway.lamp", "gateway.lifecycle"}
NEVER_IN_THE_DAEMON = ("dispatch", "gateway.testing", "gateway.contract", "gateway.configdoc",
                       "gateway.demo", "tests", "bench")


def imports(path: Path) -> set[str]:
    """The absolute module names `path` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def module_file(name: str) -> Path | None:
    """The repo file of module `name`, or None for a third-party or missing one."""
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def top(name: str) -> str:
    return name.split(".", maxsplit=1)[0]


@pytest.mark.parametrize("path", SANS_IO)
def test_the_core_does_no_io(path: str) -> None:
    io = sorted(name for name in imports(ROOT / path) if top(name) in IO_MODULES)
    assert not io, f"{path} is sans-I/O but imports {io}"


def test_the_firmware_bridge_stands_alone() -> None:
    for path in sorted((ROOT / "firmware_bridge").glob("*.py")):
        reaching = sorted(n for n in imports(path) if top(n) in ("gateway", "dispatch"))
        assert not reaching, f"{path.relative_to(ROOT)} imports {reaching}"


@pytest.mark.parametrize("path", UPLINK)
def test_the_uplink_never_reaches_back_into_inputs_or_the_station(path: str) -> None:
    back = sorted(imports(ROOT / path) & INPUTS_AND_STATION)
    assert not back, f"{path} imports {back}"


def test_nothing_the_daemon_imports_is_dispatch_test_support_or_the_generators() -> None:
    chain: dict[str, str | None] = {"gateway.daemon": None}
    todo = ["gateway.daemon"]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None:
            continue
        for imported in sorted(imports(path)):
            if imported in chain or module_file(imported) is None:
                continue
            chain[imported] = name
            todo.append(imported)
    for name, importer in chain.items():
        if name.startswith(NEVER_IN_THE_DAEMON):
            via, link = [name], importer
            while link is not None:
                via.append(link)
                link = chain[link]
            pytest.fail(f"the daemon imports {name}: {' <- '.join(via)}")
    assert "gateway.publisher" in chain and "gateway.helppoints" in chain  # the walk walked


def test_tests_share_code_without_importing_each_other() -> None:
    for path in sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "bench").glob("*.py")):
        others = sorted(n for n in imports(path)
                        if n.startswith(("tests.test_", "tests.conftest")))
        assert not others, f"{path.relative_to(ROOT)} imports {others}"


def test_run_all_runs_every_benchmark() -> None:
    """Each bench module that takes --quick and --json is in one of run_all's groups."""
    benches = {path.stem for path in (ROOT / "bench").glob("*.py")
               if path.stem != "run_all" and '"--quick"' in path.read_text(encoding="utf-8")
               and '"--json"' in path.read_text(encoding="utf-8")}
    assert len(benches) > 10  # the scan found them
    assert sorted(benches - set(BENCHES)) == [], "add them to bench.run_all.GROUPS"
    assert sorted(set(BENCHES) - benches) == [], "in GROUPS without --quick and --json"
    assert len(BENCHES) == len(set(BENCHES)), "a benchmark in two groups"


@pytest.mark.parametrize("package", ["gateway", "dispatch", "firmware_bridge"])
def test_each_package_has_one_error_hierarchy_in_its_errors_module(package: str) -> None:
    """Public exception classes live in `{package}/errors.py`, under the package's root."""
    errors = ROOT / package / "errors.py"
    tree = ast.parse(errors.read_text(encoding="utf-8"))
    defined = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    roots = [c.name for c in defined
             if any(isinstance(b, ast.Name) and b.id == "Exception" for b in c.bases)]
    assert len(roots) == 1, f"{errors.relative_to(ROOT)}: roots {roots}"
    elsewhere = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if path == errors or "testing" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.ClassDef) and not node.name.startswith("_")
                    and node.name.endswith(("Error", "Exception"))):
                elsewhere.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not elsewhere, f"define these in {errors.relative_to(ROOT)}: {elsewhere}"
