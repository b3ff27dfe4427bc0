"""The ``resilient-client`` command line, and the demo's reusable pieces."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import resilient_client as rc
from resilient_client._cli import main
from resilient_client._demo import (
    OK,
    UNFINISHED,
    LatencyRecorder,
    RunResult,
    SlowDependencyScenario,
    run_scenario,
)
from resilient_client._upstream import Upstream, UpstreamProcess

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


def test_demo_help_describes_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help_of(["demo", "--help"], capsys)
    assert out.startswith("usage: resilient-client demo ")
    for option in (
        "--slow-callers",
        "--healthy-callers",
        "--duration",
        "--slow-delay",
        "--max-healthy-requests",
        "--json",
    ):
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
        ["--slow-callers", "-1"],
        ["--slow-callers", "many"],
        ["--healthy-callers", "0"],
        ["--duration", "0"],
        ["--duration", "nan"],
        ["--slow-delay", "1000"],
        ["--max-healthy-requests", "0"],
    ],
)
def test_demo_rejects_bad_values_before_running(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", *argv])
    assert exited.value.code == 2
    assert f"argument {argv[0]}" in capsys.readouterr().err


def test_demo_rejects_a_json_path_it_could_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path in (tmp_path, tmp_path / "missing" / "demo.json"):
        with pytest.raises(SystemExit) as exited:
            main(["demo", "--json", str(path)])
        assert exited.value.code == 2
        assert "argument --json" in capsys.readouterr().err


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
    figures = tmp_path / "demo.json"
    code = main(
        [
            "demo",
            "--slow-callers",
            "30",
            "--healthy-callers",
            "3",
            "--duration",
            "0.5",
            "--slow-delay",
            "0.5",
            "--json",
            str(figures),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "httpx.AsyncClient" in out
    assert "resilient_client.AsyncClient" in out
    assert "p99 latency (ms)" in out

    report = json.loads(figures.read_text(encoding="utf-8"))
    assert report["timed_out"] is False
    assert report["scenario"]["slow_callers"] == 30
    runs = report["runs"]
    assert list(runs) == ["httpx.AsyncClient", "resilient_client.AsyncClient"]
    for run in runs.values():
        healthy, slow = run["healthy"], run["slow"]
        assert healthy["requests"] > 0
        assert healthy["requests"] == healthy["ok"] + sum(healthy["errors"].values())
        latency = healthy["latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
        # Every slow caller is accounted for, one outcome each.
        assert slow["requests"] == 30
        assert slow["ok"] + slow["bulkhead_full"] + sum(slow["other_errors"].values()) == 30
        # The slow host answers after 0.5 s, so no successful slow call can be faster.
        if slow["ok"]:
            assert slow["latency_ms"]["max"] >= 500
    resilient = runs["resilient_client.AsyncClient"]
    assert resilient["healthy"]["errors"] == {}
    # 30 callers fit in the default bulkhead (50 in flight): none is turned away.
    assert resilient["slow"]["bulkhead_full"] == 0


def test_latency_recorder_percentiles_and_outcomes() -> None:
    recorder = LatencyRecorder()
    assert recorder.percentile(0.5) is None
    for ms in range(100, 0, -1):
        recorder.record(ms / 1000)
    recorder.record(2.0, "PoolTimeout")
    recorder.record(3.0, "PoolTimeout")
    recorder.record(0.5, "HTTP 503")

    assert recorder.count == 103
    assert recorder.ok == 100
    assert recorder.errors == {"PoolTimeout": 2, "HTTP 503": 1}
    assert recorder.percentile(0.0) == pytest.approx(0.001)
    assert recorder.percentile(0.5) == pytest.approx(0.052)
    assert recorder.percentile(1.0) == 3.0
    summary = recorder.summary()
    assert summary["latency_ms"]["max"] == 3000.0
    assert json.loads(json.dumps(summary)) == summary
    with pytest.raises(ValueError, match="fraction"):
        recorder.percentile(99)


@pytest.mark.anyio
async def test_a_run_that_outlives_its_time_limit_is_cut_short(upstream: Upstream) -> None:
    scenario = SlowDependencyScenario(
        slow_callers=5, healthy_callers=2, duration=30.0, head_start=0.05, time_limit=0.5
    )
    result = RunResult(client="resilient_client.AsyncClient")
    start = time.monotonic()
    async with rc.AsyncClient() as client:
        # hang=1: the slow host never answers, so only the time limit ends these calls.
        await run_scenario(client, upstream.url(0, "/?hang=1"), upstream.url(1), scenario, result)
    assert time.monotonic() - start < 3.0
    assert result.timed_out
    assert result.slow.outcomes == {UNFINISHED: 5}
    assert result.healthy.ok > 0


@pytest.mark.anyio
async def test_the_healthy_callers_stop_at_the_request_cap(upstream: Upstream) -> None:
    scenario = SlowDependencyScenario(
        slow_callers=0, healthy_callers=3, duration=30.0, head_start=0.0, max_healthy_requests=7
    )
    result = RunResult(client="resilient_client.AsyncClient")
    async with rc.AsyncClient() as client:
        await run_scenario(client, upstream.url(0), upstream.url(1), scenario, result)
    assert not result.timed_out
    assert result.healthy.outcomes == {OK: 7}
    assert result.elapsed < 5.0


@pytest.mark.anyio
async def test_the_upstream_process_serves_then_stops() -> None:
    async with UpstreamProcess(ports=2) as upstream:
        assert upstream.returncode is None
        assert len(set(upstream.ports)) == 2
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(upstream.url(1, "/?status=503"))
        assert response.status_code == 503
    assert upstream.returncode is not None
