"""httpx's own AsyncClient tests, run with ``resilient_client.AsyncClient`` in its place.

The tests are httpx's, never copied into this repository: they come from the
sdist of the installed httpx version on PyPI, unpacked into the git-ignored
``.httpx-tests/`` folder (kept there, and reused, for the same version). They
run in a subprocess inside that folder, with the plugin
``tests/httpx_compat/substitute.py`` swapping ``httpx.AsyncClient`` for ours
before any of httpx's test modules is imported. httpx's own pytest settings
apply there, ``filterwarnings = error`` included.

Select these tests with ``-k httpx``.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

import pytest

import resilient_client

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".httpx-tests"
PLUGIN_DIR = REPO / "tests"  # put on PYTHONPATH: the plugin is ``httpx_compat.substitute``
PLUGIN = "httpx_compat.substitute"

# httpx's test files that use httpx.AsyncClient (grep -l AsyncClient tests/), plus the rest
# of tests/client/. tests/test_auth.py is not here: it unit-tests auth flows, no client.
# test_httpx_sdist_has_every_async_client_test_file checks nothing new is missed.
SELECTED = ["tests/client", "tests/test_timeouts.py", "tests/test_asgi.py"]

# Tests of httpx's that cannot pass by design, deselected by node id (a prefix, as
# pytest's --deselect matches). Each one inspects httpx's private routing internals,
# which resilient_client replaces on purpose: ``client._transport_for_url(url)`` returns
# the URL's DependencyPipeline (the dependency's bulkhead, deadline and own pools), not
# the one ``client._transport`` / proxy ``AsyncHTTPTransport`` shared by every host, so
# ``transport == client._transport`` and ``transport._pool`` do not hold. What they check
# still holds one level down, where the pipeline builds the dependency's own transport
# for httpx's route (direct, or the proxy httpx picked from arguments or the environment).
DESELECTED = [
    # The AsyncClient half asserts isinstance(client._transport_for_url(url),
    # httpx.AsyncHTTPTransport) and that its ._pool is an httpcore.AsyncSOCKSProxy.
    # (The httpx.Client half, not ours, goes with it: it is one test function.)
    "tests/client/test_proxies.py::test_socks_proxy",
    # All 17 AsyncClient cases: they assert ``client._transport_for_url(url) ==
    # client._transport`` (unproxied) or ``...._pool._proxy_url == <proxy>`` (proxied)
    # for HTTP(S)_PROXY / ALL_PROXY / NO_PROXY settings. The httpx.Client cases still run.
    "tests/client/test_proxies.py::test_proxies_environ[AsyncClient-",
    # Two tests compare a request's complete header list. resilient_client adds
    # X-Request-ID and X-Request-Timeout-Ms to every request on purpose (see
    # docs/telemetry.md); on a redirect httpx copies them into the next hop's
    # request, which is what the event hook there sees. Everything else these
    # tests check is covered by tests/test_drop_in.py and tests/test_telemetry.py.
    "tests/client/test_event_hooks.py::test_async_event_hooks_with_redirect",
    "tests/test_asgi.py::test_asgi_headers",
]

# With the deselections above, httpx 0.28.1 passes 236 tests here (1 skipped on
# Python >= 3.11). Fewer than this means the run did not really test the client.
MIN_PASSED = 200
RUN_TIMEOUT = 240  # seconds; the run takes about 20 s on a 2-core machine
FETCH_TIMEOUT = 120  # seconds; about 5 s normally


def _installed_httpx_version() -> str:
    return importlib.metadata.version("httpx")


def _is_complete(source: Path) -> bool:
    return all(
        (source / name).exists()
        for name in ("pyproject.toml", "tests/conftest.py", "tests/client/test_async_client.py")
    )


def _wanted(name: str, top: str) -> bool:
    # httpx's tests and the pyproject.toml carrying its pytest settings, but never the
    # sdist's httpx/ package: inside that folder it would shadow the installed httpx.
    return name.startswith(f"{top}/tests/") or name in (
        f"{top}/pyproject.toml",
        f"{top}/LICENSE.md",
    )


def _unpack(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as archive:
        members = archive.getmembers()
        top = members[0].name.split("/")[0]
        chosen = []
        for member in members:
            if not _wanted(member.name, top):
                continue
            if not (member.isfile() or member.isdir()) or ".." in Path(member.name).parts:
                raise AssertionError(f"unexpected member {member.name!r} in {sdist.name}")
            chosen.append(member)
        if hasattr(tarfile, "data_filter"):
            archive.extractall(into, members=chosen, filter="data")
        else:  # Python < 3.11.4; members were checked above
            archive.extractall(into, members=chosen)
    return into / top


def fetch_httpx_tests(version: str) -> Path:
    """httpx's test suite for ``version``, from the cache or fetched from its sdist on PyPI."""
    source = CACHE / f"httpx-{version}"
    if _is_complete(source):
        return source
    shutil.rmtree(source, ignore_errors=True)
    CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".fetch-") as work:
        downloads = Path(work) / "sdist"
        # ``--no-binary httpx``, not ``:all:``: pip < 23.1 applies ``:all:`` to the build
        # backend it installs to read the sdist's metadata too, and then loops trying to
        # build hatchling from source with hatchling.
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "httpx",
            "--disable-pip-version-check", "--dest", str(downloads), f"httpx=={version}",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=FETCH_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"fetching the httpx {version} sdist took over {FETCH_TIMEOUT} s")
        sdists = sorted(downloads.glob("httpx-*.tar.gz"))
        if result.returncode != 0 or len(sdists) != 1:
            pytest.fail(
                f"could not fetch the httpx {version} sdist with {' '.join(command)!r} "
                f"(exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        unpacked = _unpack(sdists[0], Path(work) / "unpacked")
        try:
            unpacked.rename(source)  # atomic: a concurrent run sees all of it or nothing
        except OSError:
            if not _is_complete(source):  # another run got there first, or a real failure
                raise
    assert _is_complete(source), f"{source} lacks httpx's tests after unpacking"
    return source


@pytest.fixture(scope="module")
def httpx_source() -> Path:
    return fetch_httpx_tests(_installed_httpx_version())


def test_httpx_sdist_has_every_async_client_test_file(httpx_source: Path) -> None:
    assert not (httpx_source / "httpx").exists(), (
        "the sdist's httpx/ would shadow the installed one"
    )
    users = {
        path.relative_to(httpx_source).as_posix()
        for path in (httpx_source / "tests").rglob("*.py")
        if "AsyncClient" in path.read_text(encoding="utf-8")
    }
    assert users, "no httpx test file mentions AsyncClient: the sdist is not what we expect"
    missed = sorted(
        user
        for user in users
        if not any(user == chosen or user.startswith(f"{chosen}/") for chosen in SELECTED)
    )
    assert not missed, f"httpx test files using AsyncClient that the compat run skips: {missed}"


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    # The outer run's pytest options and plugin choices are not for httpx's suite.
    for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        env.pop(name, None)
    # Nor are the machine's resilience settings: the client runs with its defaults.
    for name in list(env):
        if name.upper().startswith("RESILIENT_CLIENT_"):
            del env[name]
    # The subprocess runs in another folder: keep inherited entries absolute.
    inherited = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    # It must test the resilient_client this process imported, which pytest may have
    # taken from the source tree rather than from an installed copy. (The source tree's
    # own ``tests`` package cannot shadow httpx's: ``python -m`` puts the current folder,
    # httpx's, first on sys.path.)
    ours = Path(resilient_client.__file__).resolve().parents[1]
    installed = {Path(sysconfig.get_path(key)).resolve() for key in ("purelib", "platlib")}
    front = [str(PLUGIN_DIR)] + ([] if ours in installed else [str(ours)])
    env["PYTHONPATH"] = os.pathsep.join([*front, *inherited])
    return env


def _summary_counts(output: str) -> dict[str, int]:
    """Counts from pytest's closing line, e.g. ``== 238 passed, 1 skipped in 15.0s ==``."""
    closing = [
        line for line in output.splitlines() if re.search(r" in [\d.]+s( \(.*\))? =+$", line)
    ]
    if not closing:
        return {}
    counts = re.findall(
        r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)", closing[-1]
    )
    return {word.rstrip("s") if word == "errors" else word: int(n) for n, word in counts}


def test_httpx_async_client_suite_passes_with_resilient_client(httpx_source: Path) -> None:
    command = [
        sys.executable, "-m", "pytest",
        "-p", PLUGIN,
        "-p", "no:cacheprovider",
        "-c", str(httpx_source / "pyproject.toml"),  # httpx's settings: filterwarnings = error
        "--rootdir", str(httpx_source),
        "-k", "not trio",  # resilient_client is asyncio-only
        "-m", "not network",  # CI reaches PyPI only
        "--tb=short", "-rfE",
        *(f"--deselect={node}" for node in DESELECTED),
        *SELECTED,
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command,
            cwd=httpx_source,
            env=_subprocess_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        partial = (
            exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        )
        pytest.fail(f"httpx's suite ran over {RUN_TIMEOUT} s:\n{(partial or '')[-6000:]}")
    output = result.stdout + result.stderr
    tail = "\n".join(output.splitlines()[-80:])
    where = f"httpx's suite in {httpx_source}: {' '.join(command)}\n--- output tail ---\n{tail}"

    # The plugin reports what it did; the run must use the installed httpx and this
    # resilient_client, with httpx.AsyncClient swapped.
    assert "httpx.AsyncClient is resilient_client.AsyncClient: True" in output, where
    assert f"resilient_client from {Path(resilient_client.__file__).resolve()}" in output, where
    httpx_path = _header_httpx_path(output)
    assert httpx_path, where
    assert not httpx_path.startswith(str(httpx_source)), where

    counts = _summary_counts(output)
    assert result.returncode == 0, f"exit code {result.returncode}: {counts}\n{where}"
    assert counts.get("failed", 0) == 0, where
    assert counts.get("error", 0) == 0, where
    assert counts.get("passed", 0) >= MIN_PASSED, f"only {counts} (want >= {MIN_PASSED})\n{where}"


def _header_httpx_path(output: str) -> str:
    match = re.search(r"^httpx \S+ from (.+)$", output, re.MULTILINE)
    return match.group(1) if match else ""
