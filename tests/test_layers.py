"""The layers the code is built in, checked from its imports (read with `ast`, nothing run).

The gateway's packages follow the data flow (README, "How it works"), and each imports only
the layers below it (`LAYERS`, most specific name first):

- base: the version, the error hierarchy, health, systemd's notify protocol;
- the vocabulary (`core.model`, `core.commands`, `core.clock`), then `config`, then the rest
  of the sans-I/O `core`: state machines that do no I/O (no asyncio, sockets, MQTT, serial,
  SQLite, GPIO or threads), tested by feeding them values;
- `outbox`; then `inputs` and `uplink`, side by side, never importing each other;
- `station` (help points, the lifecycle); `daemon`, which wires them; `ops` (the CLI).

And:
- inputs never import the station, the outbox or the uplink; the uplink never reaches back
  into the inputs or the station;
- nothing the daemon imports, however indirectly, is the dispatch side, test support, the
  contract, the ops tools, tests or benchmarks (`config.loading` checks the config with
  pydantic in a short-lived child, and the daemon's modules never import it);
- the firmware bridge stands alone: it never imports the gateway or the dispatch side;
- tests share code through conftest.py, tests/helpers.py and gateway/testing, never by
  importing another test module; and bench.run_all runs every benchmark.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bench.run_all import BENCHES

ROOT = Path(__file__).resolve().parent.parent
IO_MODULES = {"asyncio", "socket", "selectors", "ssl", "paho", "aiomqtt", "serial",
              "serial_asyncio_fast", "sqlite3", "gpiozero", "threading", "subprocess"}
SANS_IO = sorted(
    [str(p.relative_to(ROOT)) for p in (ROOT / "gateway" / "core").glob("*.py")]
    + ["gateway/contract/spec.py", "gateway/uplink/topics.py"]
    + [f"firmware_bridge/{name}.py"
       for name in ("backoff", "codec", "errors", "frames", "protocol", "sequence")]
)
#: The daemon's layers, bottom first. A module's layer is its longest matching name.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("gateway", "gateway.errors", "gateway.health", "gateway.sdnotify"),
    ("gateway.core.model", "gateway.core.commands", "gateway.core.clock"),
    ("gateway.config",),
    ("gateway.core",),
    ("gateway.outbox",),
    ("gateway.inputs", "gateway.uplink"),
    ("gateway.station",),
    ("gateway.daemon",),
    ("gateway.ops",),
    ("gateway.__main__",),
)
#: Beside the layers: generated documents and test support, which may import any layer;
#: of the layers, only ops (the demo's Mosquitto) imports them.
OFF_THE_DAEMON = ("gateway.contract", "gateway.testing")
NEVER_IN_THE_DAEMON = ("dispatch", "gateway.testing", "gateway.contract", "gateway.ops",
                       "gateway.config.loading", "tests", "bench")


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


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def layer(name: str) -> tuple[int, str] | None:
    """(the layer's index, the matching name) of a gateway module, or None off the layers."""
    best: tuple[int, str] | None = None
    for index, names in enumerate(LAYERS):
        for prefix in names:
            if (name == prefix or name.startswith(prefix + ".")) and (
                best is None or len(prefix) > len(best[1])
            ):
                best = (index, prefix)
    return best


def room(name: str) -> str:
    """The package a module lives in (gateway.core.presses -> gateway.core)."""
    return ".".join(name.split(".")[:2])


def gateway_imports(path: Path) -> set[str]:
    """The gateway modules `path` imports (a name imported from a package: the package)."""
    return {name if module_file(name) else name.rsplit(".", 1)[0]
            for name in imports(path) if top(name) == "gateway"}


DAEMON_FILES = sorted(
    path for path in (ROOT / "gateway").rglob("*.py")
    if not module_name(path).startswith(OFF_THE_DAEMON)
)


@pytest.mark.parametrize("path", DAEMON_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_daemons_modules_import_downward_only(path: Path) -> None:
    name = module_name(path)
    here = layer(name)
    assert here is not None, f"{name} is on no layer: add it to LAYERS"
    wrong = []
    for imported in sorted(gateway_imports(path)):
        if imported.startswith(OFF_THE_DAEMON):
            checker = name == "gateway.config.loading" and imported == "gateway.contract.spec"
            if not (checker or name.startswith("gateway.ops.")):  # the demo runs a Mosquitto
                wrong.append(f"{imported} (off the daemon)")
            continue
        there = layer(imported)
        assert there is not None, f"{imported} is on no layer: add it to LAYERS"
        same_room = room(imported) == room(name)
        if there[0] > here[0] or (there[0] == here[0] and not same_room):
            wrong.append(f"{imported} (layer {there[0]}, {name} is on {here[0]})")
    assert not wrong, f"{name} imports {wrong}"


@pytest.mark.parametrize(("package", "never"), [
    ("gateway.inputs", ("gateway.station", "gateway.outbox", "gateway.uplink")),
    ("gateway.uplink", ("gateway.inputs", "gateway.station")),
])
def test_the_inputs_and_the_uplink_never_reach_into_each_other_or_the_station(
    package: str, never: tuple[str, ...]
) -> None:
    files = sorted((ROOT / Path(*package.split("."))).glob("*.py"))
    assert len(files) > 3  # the glob found the package
    for path in files:
        back = sorted(n for n in gateway_imports(path) if n.startswith(never))
        assert not back, f"{path.relative_to(ROOT)} imports {back}"


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
            parent = imported.rsplit(".", 1)[0]  # importing a module runs its package too
            if parent not in chain and module_file(parent) is not None:
                chain[parent] = imported
                todo.append(parent)
    for name, importer in chain.items():
        if name.startswith(NEVER_IN_THE_DAEMON):
            via, link = [name], importer
            while link is not None:
                via.append(link)
                link = chain[link]
            pytest.fail(f"the daemon imports {name}: {' <- '.join(via)}")
    # the walk walked:
    assert "gateway.uplink.publisher" in chain and "gateway.station.helppoints" in chain


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


def test_the_readmes_tree_names_every_module_of_the_gateway() -> None:
    """README's "How it works" tree lists each module of gateway/ in its package."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    tree = text.split("```\ngateway/\n", 1)[1].split("```", 1)[0]
    named: set[str] = set()
    package = ""
    for line in tree.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        entry = line.strip().split("  ", 1)[0]  # the names, before the caption
        if indent == 2:
            package = entry.removesuffix("/") if entry.endswith("/") else ""
        if indent in (2, 4) and not entry.endswith("/"):
            where = "gateway" if indent == 2 else f"gateway/{package}"
            named |= {f"{where}/{name.strip()}" for name in entry.split(",")}
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "gateway").rglob("*.py")
               if path.name not in ("__init__.py", "__main__.py") and "testing" not in path.parts}
    modules.add("gateway/__init__.py")
    assert len(modules) > 30  # the glob found them
    assert sorted(modules - named) == [], "add these to README's tree"
    assert sorted(named - modules) == [], "README's tree names modules that do not exist"
