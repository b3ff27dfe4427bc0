"""The ``resilient-client`` command line, and ``demo``, the bench's slow-dependency scenario."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import resilient_client as rc
from resilient_client.bench._cli import main
from resilient_client.testing._upstream import UpstreamProcess

# Generous: a bare interpreter start imports httpx and pydantic, and the machine is shared.
SUBPROCESS_TIMEOUT = 60


def _help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_explains_the_tool_and_lists_its_commands(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help_of(["--help"], capsys)
    assert out.startswith("usage: resilient-client ")
    assert "bulkhead" in out
    assert "demo" in out
    assert "python -m resilient_client" in out


def test_demo_help_says_it_is_the_bench_slow_dependency_scenario(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _help_of(["demo", "--help"], capsys)
    assert out.startswith("usage: resilient-client demo ")
    assert "bench --scenario slow-dependency --clients httpx,defaults" in out
    for option in ("--duration", "--rate", "--settings", "--out", "--no-plots", "--strict"):
        assert option in out.split("options:")[1], option


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert _help_of(["--version"], capsys) == f"resilient-client {rc.__version__}\n"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "give a command" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--duration", "0"],
        ["--duration", "nan"],
        ["--rate", "-5"],
        ["--clients", "httpx,curl"],
        ["--workers", "0"],
        ["--grace", "1000"],
    ],
)
def test_demo_rejects_bad_values_before_running(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", *argv])
    assert exited.value.code == 2
    assert f"argument {argv[0]}" in capsys.readouterr().err


def test_the_old_demo_options_are_a_usage_error_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--slow-callers", "30"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: resilient-client demo ")
    assert "unrecognized arguments: --slow-callers 30" in err
    assert "see 'resilient-client demo --help'" in err
    assert "Traceback" not in err


def test_demo_rejects_an_output_directory_it_could_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "bench.json"
    a_file.write_text("{}")
    for path in (a_file, tmp_path / "missing" / "out"):
        with pytest.raises(SystemExit) as exited:
            main(["demo", "--out", str(path)])
        assert exited.value.code == 2
        assert "argument --out" in capsys.readouterr().err


def _installed_script() -> list[str]:
    script = Path(sys.executable).with_name("resilient-client")
    found = str(script) if script.exists() else shutil.which("resilient-client")
    if found is None:
        pytest.skip("the resilient-client console script is not installed")
    return [found]


@pytest.mark.parametrize("command", ["python -m", "console script"])
def test_the_command_line_runs_as_its_own_process(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [sys.executable, "-m", "resilient_client"] if command == "python -m" else []
    argv = argv or _installed_script()
    done = subprocess.run(
        [*argv, "--help"], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stderr
    # The same help, word for word, as the in-process parser prints.
    assert done.stdout == _help_of(["--help"], capsys)


@pytest.mark.usefixtures("clean_resilience_env")
def test_a_quick_demo_runs_both_clients_and_writes_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--duration", "0.5", "--rate", "40", "--grace", "4", "--no-plots"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "bare httpx" in out
    assert "resilient (defaults)" in out
    assert "p99 ms" in out

    report = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    assert report["options"]["scenarios"] == ["slow-dependency"]
    assert list(report["clients"]) == ["httpx", "defaults"]
    scenario = report["scenarios"]["slow-dependency"]
    for key, result in scenario["results"].items():
        assert not result["cut_short"], key
        healthy, slow = result["hosts"]["healthy"], result["hosts"]["slow"]
        assert healthy["calls"] > 0
        assert healthy["calls"] == healthy["ok"] + sum(healthy["errors"].values())
        latency = healthy["latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
        # Every slow call is accounted for, one outcome each; none can beat the host's 2 s.
        assert slow["calls"] == slow["ok"] + sum(slow["errors"].values())
        if slow["ok"]:
            assert slow["latency_ms"]["max"] >= 2000
    # 40 slow calls/s for 0.5 s fit in the default bulkhead (50 in flight): none is turned away.
    resilient = scenario["headline"]["defaults"]
    assert resilient["errors"] == 0
    assert resilient["slow_failed_fast"] == 0


@pytest.mark.anyio
async def test_the_upstream_process_serves_then_stops() -> None:
    async with UpstreamProcess(ports=2) as upstream:
        assert upstream.returncode is None
        assert len(set(upstream.ports)) == 2
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(upstream.url(1, "/?status=503"))
        assert response.status_code == 503
    assert upstream.returncode is not None
