"""The ``resilient-client`` command line, ``demo`` (the bench's slow-dependency scenario) and
the concurrency sweep (``bench --scenario sweep``, ``--concurrency``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import resilient_client as rc
from resilient_client.bench._cli import main
from resilient_client.bench._scenarios import BenchOptions
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


# -- the concurrency sweep ------------------------------------------------------------------------


def test_the_sweep_table_compares_successes_per_second_at_each_level() -> None:
    from resilient_client.bench._sweep import sweep_markdown, sweep_table

    def result(ok: int, calls: int, elapsed: float, p99: float) -> dict[str, Any]:
        figures = {
            "ok": ok,
            "calls": calls,
            "errors": {"BulkheadFullError": calls - ok} if calls > ok else {},
            "latency_ms": {"p50": 1.0, "p99": p99},
        }
        return {"elapsed_s": elapsed, "hosts": {"api": figures}}

    report = {
        "scenarios": {
            "healthy": {"focus": "api", "results": {}},
            "sweep-10": {
                "concurrency": 10,
                "focus": "api",
                "results": {
                    "httpx": result(2000, 2000, 2.0, 9.0),
                    "defaults": result(1900, 1900, 2.0, 8.0),
                },
            },
            "sweep-200": {
                "concurrency": 200,
                "focus": "api",
                # Failing fast is no throughput: only successes count.
                "results": {
                    "httpx": result(1400, 1400, 2.0, 300.0),
                    "defaults": result(100, 5000, 2.0, 5.0),
                },
            },
        }
    }
    rows = sweep_table(report)
    assert [row["concurrency"] for row in rows] == [10, 200]
    low, high = (row["clients"] for row in rows)
    assert low["httpx"]["ok_per_s"] == 1000.0
    assert low["defaults"]["ratio_vs_httpx"] == 0.95
    assert "ratio_vs_httpx" not in low["httpx"]
    assert high["defaults"]["errors"] == 4900
    assert high["defaults"]["ratio_vs_httpx"] == pytest.approx(50 / 700, abs=0.001)
    labels = {"httpx": "bare httpx", "defaults": "resilient (defaults)"}
    table = sweep_markdown(rows, labels).splitlines()
    header = "| callers | httpx ok/s | errors | p99 ms | defaults ok/s | errors | p99 ms |"
    assert table[0] == header + " defaults/httpx |"
    assert table[3] == "| 200 | 700 | 0 | 300 | 50.0 | 4900 | 5.0 | 0.07 |"


def test_sweep_levels_are_bounded() -> None:
    from resilient_client.bench._scenarios import SWEEP_MAX_LEVEL, sweep_scenarios

    levels = sweep_scenarios((1, 10, 50, 100, 200))
    assert [s.name for s in levels] == ["sweep-1", "sweep-10", "sweep-50", "sweep-100", "sweep-200"]
    options = BenchOptions(load="open", workers=3, rate=500, duration=2.0, max_calls=1000)
    for scenario in levels:
        run = options.for_scenario(scenario)
        # Closed loop with the level's callers, whatever --load, --workers and --rate said.
        assert run.load == "closed"
        assert [s.workers for s in run.streams(scenario)] == [scenario.concurrency]
        # Bounded like every scenario: by its duration, the grace and the call budget.
        assert run.duration_of(scenario) == 2.0
        assert run.max_calls == 1000
        assert scenario.concurrency is not None
        assert scenario.concurrency < run.max_in_flight
    assert BenchOptions().duration_of(levels[0]) == 4.0
    for bad in (0, SWEEP_MAX_LEVEL + 1):
        with pytest.raises(ValueError, match="sweep level"):
            sweep_scenarios((bad,))


@pytest.mark.parametrize("levels", ["0", "1001", "1,1", "ten", ",", "1,2,3,4,5,6,7,8,9,10,11"])
def test_bad_sweep_levels_are_refused_before_running(
    levels: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--concurrency", levels])
    assert exited.value.code == 2
    assert "argument --concurrency" in capsys.readouterr().err


@pytest.mark.usefixtures("clean_resilience_env")
def test_a_tiny_sweep_stays_within_its_time_and_call_bounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--concurrency", "1,4", "--duration", "0.4", "--max-calls", "60"]
    argv += ["--load", "open", "--workers", "9", "--grace", "2", "--out", str(tmp_path)]
    started = time.monotonic()
    assert main(argv) == 0
    assert time.monotonic() - started < 30
    printed = capsys.readouterr().out
    assert "concurrency sweep" in printed
    assert "do no harm" in printed
    report = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    # The sweep alone, bare httpx against the defaults, no plots per level but one for the sweep.
    assert list(report["scenarios"]) == ["sweep-1", "sweep-4"]
    assert list(report["clients"]) == ["httpx", "defaults"]
    assert sorted(path.name for path in tmp_path.glob("*.png")) == ["sweep.png"]
    assert [row["concurrency"] for row in report["sweep"]] == [1, 4]
    for name, callers in (("sweep-1", 1), ("sweep-4", 4)):
        scenario = report["scenarios"][name]
        # A closed loop of the level's callers, whatever --load and --workers said.
        assert scenario["load"]["mode"] == "closed"
        assert scenario["load"]["streams"] == [
            {"host": "api", "workers": callers, "think_time_s": 0.0}
        ]
        for key, result in scenario["results"].items():
            api = result["hosts"]["api"]
            assert 0 < api["calls"] <= 60, (name, key)
            assert api["ok"] == api["calls"], (name, key)
            assert not result["cut_short"]
    rows: list[dict[str, Any]] = report["sweep"]
    assert rows[1]["clients"]["defaults"]["ratio_vs_httpx"] > 0
    assert {row["scenario"] for row in report["do_no_harm"]} == {"sweep-1", "sweep-4"}


def test_the_sweep_runs_after_the_scenarios_named() -> None:
    from resilient_client.bench._cli import build_parser
    from resilient_client.bench._command import _bench_plan

    args = build_parser().parse_args(["bench", "--scenario", "outage,sweep", "--duration", "3"])
    plan, clients = _bench_plan(args)
    assert [scenario.name for scenario, _ in plan] == [
        "outage",
        "sweep-1",
        "sweep-10",
        "sweep-50",
        "sweep-100",
        "sweep-200",
    ]
    assert clients == ["httpx", "hand-written", "defaults"]
    assert plan[0][1].load == "open"
    assert all(options.load == "closed" for _, options in plan[1:])
    assert all(options.duration == 3.0 for _, options in plan)
    assert isinstance(plan[1][1], BenchOptions)
