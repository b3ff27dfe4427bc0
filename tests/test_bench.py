"""``resilient-client bench``: the command on tiny scenarios, its report, plots and errors."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from resilient_client.bench._cli import build_parser, main
from resilient_client.bench._clients import client_specs
from resilient_client.bench._figures import (
    amplification_between,
    host_timeline,
    overhead,
    recovery_time,
)
from resilient_client.bench._load import NOT_SENT, OK, UNFINISHED, CallLog
from resilient_client.bench._runner import ClientRun, ScenarioResult, run_scenario
from resilient_client.bench._scenarios import SCENARIOS, BenchOptions, Scenario, Stream
from resilient_client.bench._stats import latency_summary, percentile
from resilient_client.testing._profiles import Profile

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _bench_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_explains_every_option_and_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    out = _bench_help(capsys)
    assert out.startswith("usage: resilient-client bench ")
    parser = build_parser()
    bench = next(
        action.choices["bench"]
        for action in parser._actions
        if isinstance(action.choices, dict) and "bench" in action.choices
    )
    options = [s for action in bench._actions for s in action.option_strings if s.startswith("--")]
    assert "--settings" in options
    listed = out.split("options:")[1]
    for option in options:
        assert option in listed, option
    for action in bench._actions:
        if action.option_strings and action.help:
            assert action.help.split()[0] in listed, action.option_strings
    for scenario in ("healthy", "slow-dependency", "outage", "flapping", "throttled", "payments"):
        assert scenario in out
    assert "pip install 'resilient-client[bench]'" in out


def test_the_top_level_help_points_to_bench(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "bench" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--scenario", "nope"],
        ["--clients", "httpx,curl"],
        ["--clients", "httpx,httpx"],
        ["--duration", "0"],
        ["--rate", "-5"],
        ["--load", "sideways"],
        ["--workers", "0"],
    ],
)
def test_bad_values_are_refused_before_running(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", *argv])
    assert exited.value.code == 2
    assert f"argument {argv[0]}" in capsys.readouterr().err


def _bad_settings(tmp_path: Path) -> Path:
    path = tmp_path / "resilience.toml"
    path.write_text("[default.retry]\nattempts = 0\n[default.breaker]\nopen_fr = 3\n")
    return path


@pytest.mark.usefixtures("clean_resilience_env")
def test_a_bad_settings_file_gives_the_library_error_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["bench", "--settings", str(_bad_settings(tmp_path)), "--out", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("resilient-client bench: error: invalid resilience settings in ")
    assert "default.retry.attempts" in err
    assert "default.breaker.open_fr: unknown setting" in err
    assert "Traceback" not in err
    assert not (tmp_path / "bench.json").exists()


@pytest.mark.usefixtures("clean_resilience_env")
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--settings", "{missing}"], "does not exist"),
        (["--settings", "{good}", "--dependency", "ledger"], "names no dependency 'ledger'"),
        (["--dependency", "payments"], "--dependency needs --settings"),
        (["--clients", "settings"], "needs --settings"),
    ],
)
def test_unusable_settings_choices_are_clear_errors(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[dependencies.payments]\nhosts = ["payments.internal"]\n')
    argv = [a.format(missing=tmp_path / "none.toml", good=good) for a in extra]
    assert main(["bench", *argv, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_missing_extras_name_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules makes the import fail, as if matplotlib were not installed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["bench", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "matplotlib" in err
    assert "pip install 'resilient-client[bench]'" in err


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    # A blank canvas of this size is a few KB; drawn axes, lines and text make it more.
    assert len(data) > 10_000, (path, len(data))


@pytest.mark.usefixtures("clean_resilience_env")
def test_a_tiny_outage_run_writes_the_report_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    # 200 calls/s: some 90 calls start within the 0.45 s outage, so the few whose
    # requests land in a neighbouring server bucket move bare httpx's
    # requests-per-call by a few percent (at 60/s, 27 calls, by up to 20%).
    argv = ["bench", "--scenario", "outage", "--duration", "1.5", "--rate", "200"]
    argv += ["--clients", "httpx,defaults", "--grace", "3", "--out", str(out), "--seed", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "bare httpx" in printed
    assert "resilient (defaults)" in printed
    assert "upstream requests/call" in printed

    report = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    assert report["tool"] == "resilient-client bench"
    assert report["machine"]["nproc"] >= 1
    assert report["machine"]["packages"]["httpx"]
    assert report["options"]["seed"] == 4
    assert report["options"]["scenarios"] == ["outage"]
    assert list(report["clients"]) == ["httpx", "defaults"]
    assert "default_policy" in report["clients"]["defaults"]["description"]
    outage = report["scenarios"]["outage"]
    assert outage["outages_s"] == [{"start": 0.375, "end": 0.825}]
    assert outage["load"]["mode"] == "open"
    assert outage["hosts"]["dep"]["outages"][0]["status"] == 503
    for key in ("httpx", "defaults"):
        result = outage["results"][key]
        dep = result["hosts"]["dep"]
        assert dep["calls"] > 20
        assert dep["calls"] == dep["ok"] + sum(dep["errors"].values())
        assert set(dep["latency_ms"]) == {"p50", "p90", "p99", "p999", "max"}
        # Every request the server saw is one it answered, by kind.
        assert dep["upstream"]["requests"] == sum(dep["upstream"]["answered"].values())
        assert dep["upstream"]["answered"].get("outage", 0) > 0
        timeline = result["timeline"]["hosts"]["dep"]
        assert sum(row["calls"] for row in timeline) == dep["calls"]
        after_load = result["timeline"]["after_load"]["dep"]["upstream_requests"]
        drawn = sum(row["upstream_requests"] for row in timeline)
        assert drawn + after_load == dep["upstream"]["requests"]
        headline = outage["headline"][key]
        assert {"success_ratio", "p99_ms", "upstream_per_call", "outages"} <= set(headline)
        assert {"per_call", "recovery_s", "failed"} <= set(headline["outages"][0])
    # Bare httpx sends every call; it has no breaker to sample.
    assert outage["headline"]["httpx"]["outages"][0]["per_call"] == pytest.approx(1.0, abs=0.1)
    assert all(sample["hosts"] == {} for sample in outage["results"]["httpx"]["breaker"])
    states = {
        sample["hosts"]["dep"]["state"]
        for sample in outage["results"]["defaults"]["breaker"]
        if "dep" in sample["hosts"]
    }
    assert "open" in states

    for kind in ("latency", "errors", "breaker", "load"):
        _assert_png(out / f"outage-{kind}.png")


@pytest.mark.usefixtures("clean_resilience_env")
def test_settings_hand_written_and_closed_loop_in_one_tiny_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "resilience.toml"
    settings.write_text(
        "[dependencies.payments]\n"
        'hosts = ["payments.internal"]\n'
        "[dependencies.payments.breaker]\n"
        "open_for = 1.5\n"
        "[dependencies.payments.bulkhead]\n"
        "max_concurrent = 7\n"
    )
    argv = ["bench", "--scenario", "healthy,flapping", "--duration", "1", "--load", "closed"]
    argv += ["--workers", "3", "--settings", str(settings), "--dependency", "payments"]
    argv += ["--clients", "httpx,hand-written,settings", "--no-plots", "--out", str(tmp_path)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    assert not list(tmp_path.glob("*.png"))
    policy = report["clients"]["settings"]["description"]["default_policy"]
    assert policy["breaker"]["open_for"] == 1.5
    assert policy["bulkhead"]["max_concurrent"] == 7
    assert report["options"]["dependency"] == "payments"
    healthy = report["scenarios"]["healthy"]
    assert healthy["load"]["streams"] == [{"host": "api", "workers": 3, "think_time_s": 0.0}]
    for key in ("hand-written", "settings"):
        # Measured side by side with bare httpx, segment by segment.
        assert healthy["headline"][key]["cpu_ratio_vs_httpx"] > 0
        assert healthy["results"][key]["hosts"]["api"]["success_ratio"] == 1.0
    flapping = report["scenarios"]["flapping"]["results"]
    # The hand-written retries send more than one request per call to a flapping host.
    assert flapping["hand-written"]["hosts"]["flaky"]["upstream"]["per_call"] > 1.0
    assert flapping["httpx"]["hosts"]["flaky"]["upstream"]["per_call"] == pytest.approx(1.0)


def _log(*calls: tuple[float, str]) -> CallLog:
    log = CallLog()
    for start, outcome in calls:
        log.add(start, 0.01, outcome)
    return log


def test_recovery_is_the_end_of_the_last_failing_window_after_the_outage() -> None:
    fail, ok = "HTTP 503", OK
    log = _log(
        *[(4.0 + i * 0.1, fail) for i in range(10)], *[(5.0 + i * 0.1, ok) for i in range(40)]
    )
    assert recovery_time(log, outage_end=3.0, until=9.0) == 2.0
    assert recovery_time(_log((3.1, ok), (8.0, ok)), outage_end=3.0, until=9.0) == 0.0
    # Still failing at the end of the run: not recovered within it.
    assert recovery_time(_log((3.1, ok), (8.9, fail)), outage_end=3.0, until=9.0) is None
    assert recovery_time(_log((1.0, ok)), outage_end=3.0, until=9.0) is None
    # Calls from ``until`` on (a next outage, say) are not judged.
    assert recovery_time(_log((3.1, ok), (6.0, ok), (7.0, fail)), 3.0, until=7.0) == 0.0
    # Calls the load generator never sent say nothing about recovery.
    assert recovery_time(_log((3.1, ok), (4.0, NOT_SENT)), outage_end=3.0, until=9.0) == 0.0


def test_amplification_counts_the_window_only() -> None:
    log = _log((0.5, OK), (1.2, "HTTP 503"), (1.5, "HTTP 503"), (2.5, OK))
    received = {"timeline": {"5": {"ok": 1}, "12": {"outage": 3}, "15": {"outage": 3}}}
    figures = amplification_between(log, received, bucket=0.1, start=1.0, end=2.0)
    assert figures == {"calls": 2, "upstream_requests": 6, "per_call": 3.0}


def test_amplification_counts_calls_and_requests_over_the_same_span() -> None:
    # A call every 10 ms, each answered once, and an outage that does not start or
    # end on the server's 0.1 s buckets: every call is one request, whatever the edges.
    log = _log(*[(i / 100, "HTTP 503") for i in range(150)])
    received = {"timeline": {str(key): {"outage": 10} for key in range(15)}}
    figures = amplification_between(log, received, bucket=0.1, start=0.375, end=0.825)
    assert figures["per_call"] == 1.0
    assert figures["calls"] == figures["upstream_requests"]


def test_percentiles_are_nearest_rank_and_summaries_in_ms() -> None:
    assert percentile([], 0.5) is None
    ordered = [ms / 1000 for ms in range(1, 101)]
    assert percentile(ordered, 0.0) == pytest.approx(0.001)
    assert percentile(ordered, 0.5) == pytest.approx(0.050)
    assert percentile(ordered, 0.99) == pytest.approx(0.099)
    assert percentile(ordered, 1.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="fraction"):
        percentile(ordered, 99)
    summary = latency_summary(reversed(ordered))
    assert summary == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 100.0, "max": 100.0}
    assert json.loads(json.dumps(summary)) == summary


def _one_host(profile: Profile, stream: Stream) -> Scenario:
    return Scenario(
        "tiny", "one host", 30.0, lambda duration: {"host": profile}, (stream,), focus="host"
    )


@pytest.mark.anyio
async def test_calls_that_outlive_the_grace_are_cut_short_and_counted_unfinished() -> None:
    # Every request hangs: only the run's time limit ends the calls.
    scenario = _one_host(Profile(name="host", hang_ratio=1.0), Stream("host", rate=20, workers=2))
    options = BenchOptions(duration=0.3, grace=0.3)
    start = time.monotonic()
    result = await run_scenario(scenario, client_specs(["defaults"]), options)
    assert time.monotonic() - start < 10.0
    (run,) = result.runs
    assert run.cut_short
    assert set(run.logs["host"].outcomes) == {UNFINISHED}


@pytest.mark.anyio
async def test_a_run_stops_at_its_call_budget() -> None:
    scenario = _one_host(Profile(name="host"), Stream("host", rate=20, workers=3))
    options = BenchOptions(load="closed", duration=30.0, max_calls=7)
    start = time.monotonic()
    result = await run_scenario(scenario, client_specs(["httpx"]), options)
    assert time.monotonic() - start < 10.0
    (run,) = result.runs
    assert run.logs["host"].outcomes == [OK] * 7
    assert run.received["host"]["outcomes"] == {"ok": 7}


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """A tiny ``bench --scenario healthy --no-plots``: its report and what it printed to stderr."""
    out = tmp_path_factory.mktemp("healthy")
    argv = ["bench", "--scenario", "healthy", "--duration", "1", "--clients", "httpx,defaults"]
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(err):
        for name in list(os.environ):
            if name.upper().startswith("RESILIENT_CLIENT_"):
                patch.delenv(name)
        assert main([*argv, "--no-plots", "--out", str(out)]) == 0
    return json.loads((out / "bench.json").read_text(encoding="utf-8")), err.getvalue()


def test_a_healthy_host_gets_one_upstream_request_per_call_from_every_client(
    healthy_run: tuple[dict[str, Any], str],
) -> None:
    # No retries on a healthy host: the warm-up's requests are not the run's.
    results = healthy_run[0]["scenarios"]["healthy"]["results"]
    for key, result in results.items():
        api = result["hosts"]["api"]
        assert api["calls"] > 100, key
        assert api["upstream"]["requests"] == api["calls"], key
        assert api["upstream"]["per_call"] == 1.0, key


def test_the_healthy_timeline_sums_to_the_totals(
    healthy_run: tuple[dict[str, Any], str],
) -> None:
    results = healthy_run[0]["scenarios"]["healthy"]["results"]
    for key, result in results.items():
        api = result["hosts"]["api"]
        rows = result["timeline"]["hosts"]["api"]
        after = result["timeline"]["after_load"]["api"]["upstream_requests"]
        assert sum(row["calls"] for row in rows) == api["calls"], key
        assert sum(row["upstream_requests"] for row in rows) + after == api["upstream"]["requests"]
        # Load in every segment: no window of the run is without upstream requests.
        assert all(row["upstream_requests"] > 0 for row in rows), (key, rows)


def test_no_plots_lists_no_plots(healthy_run: tuple[dict[str, Any], str]) -> None:
    printed = healthy_run[1]
    assert "bench.json" in printed
    assert "plot" not in printed
    assert ".png" not in printed


def test_requests_after_the_load_are_not_drawn_as_load() -> None:
    from resilient_client.bench._figures import requests_after

    log = _log((0.1, OK), (0.6, OK), (1.9, OK))
    # Buckets of 0.1 s: 5 requests in the first half second, 3 late in the run and 7
    # after the load ended at 2.0 s (retries, queued requests sent late).
    received = {"timeline": {"2": {"ok": 5}, "19": {"ok": 3}, "20": {"ok": 4}, "31": {"ok": 3}}}
    rows = host_timeline(log, received, bucket=0.1, window=0.5, until=2.0)
    assert [row["upstream_requests"] for row in rows] == [5, 0, 0, 3]
    assert [row["calls"] for row in rows] == [1, 1, 0, 1]
    assert requests_after(received, bucket=0.1, until=2.0) == 7


def _segmented(*segments: tuple[str, list[tuple[int, float, float]]]) -> ScenarioResult:
    runs = []
    for key, per_segment in segments:
        run = ClientRun(client_specs([key])[0], {})
        run.segments = per_segment
        runs.append(run)
    scenario = SCENARIOS["healthy"]
    return ScenarioResult(scenario, BenchOptions(), 1.0, scenario.streams, {}, runs, 0.1)


def test_the_cpu_ratio_is_the_ratio_of_the_cpu_figures_beside_it() -> None:
    # (calls, CPU seconds, wall seconds) per segment; the machine was busy during bare
    # httpx's second segment. Each client's figure is its median, the ratio theirs.
    result = _segmented(
        ("httpx", [(100, 0.10, 1.0), (100, 0.30, 1.0), (100, 0.10, 1.0)]),
        ("defaults", [(100, 0.12, 1.0), (100, 0.20, 1.0), (100, 0.12, 1.0)]),
    )
    figures = overhead(result)
    base, mine = figures["httpx"], figures["defaults"]
    assert base["cpu_us_per_call"] == 1000.0
    assert mine["cpu_us_per_call"] == 1200.0
    assert mine["cpu_ratio_vs_httpx"] == pytest.approx(1.2)
    assert mine["calls_per_s"] == base["calls_per_s"] == 100.0
    assert mine["throughput_ratio_vs_httpx"] == pytest.approx(1.0)


# -- the do-no-harm table -------------------------------------------------------------------------


def _host(ok: int, p99: float | None, calls: int | None = None) -> dict[str, Any]:
    return {"ok": ok, "calls": calls or ok, "latency_ms": {"p99": p99}}


_SLOW = {"latency": {"median": 2.0}}
_FINE = {"latency": {"median": 0.005, "sigma": 0.3}}


def _two_hosts(bare: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    return {
        "scenarios": {
            "slow-dependency": {
                "hosts": {"slow": _SLOW, "healthy": _FINE},
                "results": {"httpx": {"hosts": bare}, "defaults": {"hosts": ours}},
            }
        }
    }


def _verdicts(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    from resilient_client.bench._harm import do_no_harm

    return {row["host"]: (row["verdict"], row["why"]) for row in do_no_harm(report)}


def test_bare_extra_successes_that_cost_the_healthy_host_are_excused_and_said() -> None:
    bare = {"slow": _host(100, 2100.0), "healthy": _host(49, 74539.0, calls=507)}
    ours = {"slow": _host(60, 2050.0), "healthy": _host(507, 14.5)}
    verdicts = _verdicts(_two_hosts(bare, ours))
    assert verdicts["healthy"] == ("ok", "")
    verdict, why = verdicts["slow"]
    assert verdict == "excused"
    assert why.startswith("bare's extra successes on this host cost its healthy host 'healthy'")
    assert "74,539 ms against 14.5 ms" in why
    assert "49 successes against 507" in why


def test_fewer_successes_with_no_cost_to_bare_are_worse_with_the_numbers() -> None:
    bare = {"slow": _host(100, 2100.0), "healthy": _host(507, 20.0)}
    ours = {"slow": _host(60, 2050.0), "healthy": _host(507, 14.5)}
    verdict, why = _verdicts(_two_hosts(bare, ours))["slow"]
    assert verdict == "worse"
    assert why == "60 successes against bare httpx's 100 (-40, -40.0%)"


def test_a_healthy_host_beside_a_slow_one_must_keep_its_p99_within_100_ms() -> None:
    bare = {"slow": _host(100, 2100.0), "healthy": _host(49, 74539.0, calls=507)}
    ours = {"slow": _host(100, 2050.0), "healthy": _host(507, 150.0)}
    verdicts = _verdicts(_two_hosts(bare, ours))
    assert verdicts["slow"] == ("ok", "")
    verdict, why = verdicts["healthy"]
    assert verdict == "worse"
    assert why == "p99 150 ms, more than 100 ms beside a troubled host"


def test_a_lone_host_is_judged_by_its_successes_only() -> None:
    from resilient_client.bench._harm import do_no_harm, harm_markdown

    limited = {"latency": {"median": 0.005}, "throttle": {"rate": 50}}
    report = {
        "scenarios": {
            "throttled": {
                "hosts": {"limited": limited},
                "results": {
                    "httpx": {"hosts": {"limited": _host(489, 900.0)}},
                    "defaults": {"hosts": {"limited": _host(489, 2500.0)}},
                    "hand-written": {"hosts": {"limited": _host(10, 1.0)}},
                },
            },
            # Without bare httpx beside it, a scenario is not judged.
            "alone": {"hosts": {"a": _FINE}, "results": {"defaults": {"hosts": {}}}},
        }
    }
    rows = do_no_harm(report)
    # The library's clients are judged, not the hand-written composition.
    assert [(r["scenario"], r["client"], r["role"], r["verdict"]) for r in rows] == [
        ("throttled", "defaults", "troubled", "ok")
    ]
    assert rows[0]["httpx_p99_ms"] == 900.0
    table = harm_markdown(rows).splitlines()
    assert table[0].startswith("| scenario | host | kind | client | ok (httpx) | ok |")
    row = "| throttled | limited | troubled | defaults | 489 | 489 | 900 ms | 2,500 ms | ok |"
    assert table[2] == row


def test_which_hosts_are_troubled() -> None:
    from resilient_client.bench._harm import troubled
    from resilient_client.bench._scenarios import SCENARIOS

    hosts = {
        (name, host): troubled(profile.to_dict())
        for name, scenario in SCENARIOS.items()
        for host, profile in scenario.hosts(10.0).items()
    }
    healthy = {("healthy", "api"), ("slow-dependency", "healthy")}
    assert {key for key, value in hosts.items() if not value} == healthy


def test_the_healthy_run_report_judges_every_host(healthy_run: tuple[dict[str, Any], str]) -> None:
    rows = healthy_run[0]["do_no_harm"]
    assert [(r["scenario"], r["host"], r["client"], r["role"]) for r in rows] == [
        ("healthy", "api", "defaults", "healthy")
    ]
    assert rows[0]["httpx_ok"] > 100


# -- the figures issue 12's targets need ---------------------------------------------------------


def test_quota_share_is_answers_over_the_quota_while_sending() -> None:
    from resilient_client.bench._figures import quota_use

    # Buckets of 0.1 s: sending from bucket 10 to the end of bucket 29, 2 s; the load ends at
    # 2.5 s, so bucket 29 (2.9 s) is after it.
    received = {
        "outcomes": {"ok": 90, "throttled": 7},
        "timeline": {"10": {"ok": 10, "throttled": 7}, "20": {"ok": 40}, "29": {"ok": 40}},
    }
    figures = quota_use(received, bucket=0.1, quota=50, until=2.5)
    assert figures == {
        "quota_per_s": 50,
        "sending_s": 2.0,
        "upstream_ok": 90,
        "upstream_429": 7,
        "quota_share": 0.9,
        # The load ended at 2.5 s: 50 answers in it, of the 125 its quota allowed.
        "quota_share_during_load": 0.4,
    }
    assert quota_use({}, bucket=0.1, quota=50, until=1.0)["quota_share"] is None
