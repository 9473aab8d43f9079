"""The daemon never loads pydantic: its RSS must stay under 40 MB, and pydantic costs ~11 MiB.

pydantic is the spec (gateway.contract.spec): the contract, the console, `check-config` and
the tests use it. The modules the daemon runs must not import it, not even indirectly.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import DAEMON_MODULES

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = ("pydantic", "pydantic_core")

# Records who imports what, so a failure names the chain that pulled pydantic in.
_PROBE = textwrap.dedent("""
    import importlib, sys

    FORBIDDEN = {forbidden!r}
    importer = {{}}

    class Recorder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            frame = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__", "").startswith(
                    ("importlib", "_frozen_importlib")):
                frame = frame.f_back
            importer.setdefault(name, "?" if frame is None else frame.f_globals["__name__"])
            return None  # the ordinary finders do the importing

    sys.meta_path.insert(0, Recorder)
    for module in {modules!r}:
        importlib.import_module(module)
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in FORBIDDEN)
    for name in [name for name in loaded if name in FORBIDDEN] or loaded:
        chain = [name]
        while chain[-1] in importer and importer[chain[-1]] not in chain:
            chain.append(importer[chain[-1]])
        print(" <- ".join(chain))
""")


def test_daemon_modules_import_no_pydantic() -> None:
    probe = _PROBE.format(forbidden=FORBIDDEN, modules=DAEMON_MODULES)
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.splitlines()
    assert not loaded, "the daemon imports pydantic (module <- its importer <- ...):\n" + (
        "\n".join(loaded)
    )


def test_the_probe_names_the_import_chain() -> None:
    # A control: the same probe run on the contract, which does use pydantic, finds it and
    # names who imported it.
    probe = _PROBE.format(forbidden=FORBIDDEN, modules=("gateway.contract.asyncapi",))
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60,
        cwd=ROOT,
    )
    assert "pydantic <- gateway.contract.asyncapi <- __main__" in result.stdout.splitlines()
