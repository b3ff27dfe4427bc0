"""The package's shape: the core never pulls in the bench or its extras; modules stay readable."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import resilient_client

# Generous: a bare interpreter start imports httpx and pydantic, and the machine is shared.
SUBPROCESS_TIMEOUT = 60
PACKAGE = Path(resilient_client.__file__).parent
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running ``code``."""
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=True,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_library_imports_neither_the_bench_nor_the_testing_tools() -> None:
    modules = _modules_after("import resilient_client")
    assert "resilient_client" in modules
    # httpx imports rich itself, for its own command line, wherever rich is installed
    # (httpx/__init__.py tries ``from ._main import main``): only what we add counts.
    ours = modules - _modules_after("import httpx")
    unwanted = ("resilient_client.bench", "resilient_client.testing", "rich", "matplotlib")
    below = tuple(f"{name}." for name in unwanted)
    leaked = sorted(m for m in ours if m in unwanted or m.startswith(below))
    assert leaked == []


def test_the_testing_tools_import_without_the_bench_extra() -> None:
    # None in sys.modules makes an import fail, as if the package were not installed.
    code = (
        "import sys\n"
        "sys.modules['rich'] = sys.modules['matplotlib'] = None\n"
        "import resilient_client.testing._upstream, resilient_client.testing._profiles"
    )
    assert "resilient_client.testing._upstream" in _modules_after(code)


def _own_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _own_modules(), ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_module_and_function_stays_short(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []
