"""Settings load from a dict, a TOML file or the environment; bad ones fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

import resilient_client as rc

pytestmark = pytest.mark.usefixtures("clean_resilience_env")

TOML = """
[default.timeout]
total = 3.0

[default.bulkhead]
max_concurrent = 20

[dependencies.payments]
hosts = ["payments.internal", "*.pay.internal:8443"]

[dependencies.payments.timeout]
attempt = 0.5

[dependencies.payments.rate_limit]
rate = 100
"""


def test_defaults_without_any_settings() -> None:
    settings = rc.ResilienceSettings.from_environment()
    assert settings.dependencies == {}
    assert settings.default.timeout.total == 10.0
    assert settings.default.bulkhead.max_concurrent == 50
    assert settings.default.rate_limit is None


def test_a_dependency_inherits_what_it_does_not_set_from_default() -> None:
    settings = rc.ResilienceSettings.from_mapping(
        {
            "default": {"timeout": {"total": 3.0, "connect": 0.5}, "retry": {"attempts": 2}},
            "dependencies": {"inventory": {"hosts": ["inv.internal"], "timeout": {"total": 1.0}}},
        }
    )
    policy = settings.policy_for("inventory")
    assert policy.timeout.total == 1.0  # its own
    assert policy.timeout.connect == 0.5  # from default, within the same section
    assert policy.timeout.attempt == 5.0  # library default: neither sets it
    assert policy.retry.attempts == 2  # a whole section from default


def test_a_dependency_can_turn_off_a_default_rate_limit() -> None:
    settings = rc.ResilienceSettings.from_mapping(
        {
            "default": {"rate_limit": {"rate": 10}},
            "dependencies": {
                "bulk": {"hosts": ["bulk.internal"], "rate_limit": None},
                "other": {"hosts": ["other.internal"]},
            },
        }
    )
    assert settings.policy_for("bulk").rate_limit is None
    other = settings.policy_for("other").rate_limit
    assert other is not None
    assert other.rate == 10


def test_settings_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "resilience.toml"
    path.write_text(TOML)
    settings = rc.ResilienceSettings.from_toml(path)
    payments = settings.policy_for("payments")
    assert payments.timeout.attempt == 0.5
    assert payments.timeout.total == 3.0
    assert payments.bulkhead.max_concurrent == 20
    assert payments.rate_limit == rc.RateLimitPolicy(rate=100, period=1.0)
    assert settings.dependencies["payments"].hosts == ["payments.internal", "*.pay.internal:8443"]


def test_environment_overrides_the_toml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "resilience.toml"
    path.write_text(TOML)
    monkeypatch.setenv("RESILIENT_CLIENT_DEFAULT__TIMEOUT__TOTAL", "7.5")
    monkeypatch.setenv("RESILIENT_CLIENT_DEPENDENCIES__PAYMENTS__TIMEOUT__ATTEMPT", "0.25")
    settings = rc.ResilienceSettings.from_toml(path)
    assert settings.default.timeout.total == 7.5
    assert settings.policy_for("payments").timeout.attempt == 0.25
    assert settings.default.bulkhead.max_concurrent == 20  # untouched file value


def test_settings_from_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENT_CLIENT_DEFAULT__BULKHEAD__MAX_QUEUE", "0")
    monkeypatch.setenv("RESILIENT_CLIENT_DEPENDENCIES__SEARCH__HOSTS", '["search.internal"]')
    monkeypatch.setenv("RESILIENT_CLIENT_MAX_TRACKED_HOSTS", "64")
    settings = rc.ResilienceSettings.from_environment()
    assert settings.default.bulkhead.max_queue == 0
    assert settings.dependencies["search"].hosts == ["search.internal"]
    assert settings.max_tracked_hosts == 64


def test_code_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENT_CLIENT_DEFAULT__TIMEOUT__TOTAL", "7.5")
    monkeypatch.setenv("RESILIENT_CLIENT_DEFAULT__TIMEOUT__CONNECT", "0.7")
    settings = rc.ResilienceSettings.from_mapping({"default": {"timeout": {"total": 2.0}}})
    assert settings.default.timeout.total == 2.0
    # Merged setting by setting: the environment still fills what code left out.
    assert settings.default.timeout.connect == 0.7


def test_the_client_accepts_settings_dict_path_and_object(tmp_path: Path) -> None:
    path = tmp_path / "resilience.toml"
    path.write_text(TOML)
    as_object = rc.ResilienceSettings.from_toml(path)
    for given in (as_object, path, str(path), as_object.model_dump()):
        client = rc.AsyncClient(settings=given)
        assert client.resilience_settings.policy_for("payments").timeout.attempt == 0.5


def test_the_client_rejects_settings_of_another_type() -> None:
    with pytest.raises(TypeError, match="settings must be"):
        rc.AsyncClient(settings=42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "path", "fragment"),
    [
        ({"default": {"timeout": {"total": -1}}}, "default.timeout.total", "greater than 0"),
        ({"default": {"timeout": {"totl": 1}}}, "default.timeout.totl", "unknown setting"),
        ({"defaults": {}}, "defaults", "unknown setting"),
        (
            {"default": {"retry": {"attempts": 0}}},
            "default.retry.attempts",
            "greater than or equal",
        ),
        (
            {"default": {"retry": {"backoff_base": 2, "backoff_max": 1}}},
            "default.retry",
            "backoff_max (1.0) must be >= backoff_base (2.0)",
        ),
        (
            {"default": {"retry": {"retry_on_status": [700]}}},
            "default.retry.retry_on_status.0",
            "599",
        ),
        ({"default": {"breaker": {"failure_ratio": 1.5}}}, "default.breaker.failure_ratio", "1"),
        ({"default": {"bulkhead": {"max_queue": -1}}}, "default.bulkhead.max_queue", "0"),
        ({"default": {"rate_limit": {"rate": 0}}}, "default.rate_limit.rate", "greater than 0"),
        ({"default": {"pool": {"max_connections": 0}}}, "default.pool.max_connections", "1"),
        ({"default": {"timeout": {"total": "soon"}}}, "default.timeout.total", "number"),
        ({"default": {"timeout": {"total": float("inf")}}}, "default.timeout.total", "finite"),
        ({"dependencies": {"p": {}}}, "dependencies.p.hosts", "required"),
        ({"dependencies": {"p": {"hosts": []}}}, "dependencies.p.hosts", "at least 1"),
        (
            {"dependencies": {"p": {"hosts": ["http://pay.internal/"]}}},
            "dependencies.p.hosts.0",
            "without scheme or path",
        ),
        ({"dependencies": {"p": {"hosts": ["pay:99999"]}}}, "dependencies.p.hosts.0", "port"),
        ({"dependencies": {"p": {"hosts": ["a*.x"]}}}, "dependencies.p.hosts.0", "wildcard"),
        ({"dependencies": {"p": {"hosts": ["::1"]}}}, "dependencies.p.hosts.0", "brackets"),
    ],
)
def test_a_bad_setting_names_its_full_path_and_value(
    data: dict[str, object], path: str, fragment: str
) -> None:
    with pytest.raises(rc.SettingsError) as caught:
        rc.ResilienceSettings.from_mapping(data)
    error = caught.value
    assert isinstance(error, ValueError)
    paths = [problem[0] for problem in error.problems]
    assert path in paths, str(error)
    line = next(line for line in str(error).splitlines() if line.strip().startswith(path + ":"))
    assert fragment in line
    assert "(got " in line


def test_two_dependencies_cannot_claim_one_host() -> None:
    with pytest.raises(rc.SettingsError, match="claimed by both dependencies 'a' and 'b'"):
        rc.ResilienceSettings.from_mapping(
            {"dependencies": {"a": {"hosts": ["x.internal"]}, "b": {"hosts": ["X.internal"]}}}
        )


def test_a_bad_toml_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[default.timeout]\ntotal = 0\n")
    with pytest.raises(rc.SettingsError, match=r"bad\.toml.*\n  default\.timeout\.total"):
        rc.AsyncClient(settings=path)
    path.write_text("[default\n")
    with pytest.raises(rc.SettingsError, match="not valid TOML"):
        rc.ResilienceSettings.from_toml(path)
    with pytest.raises(rc.SettingsError, match="does not exist"):
        rc.ResilienceSettings.from_toml(tmp_path / "missing.toml")


def test_a_bad_environment_variable_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENT_CLIENT_DEFAULT__BULKHEAD__MAX_CONCURRENT", "many")
    with pytest.raises(rc.SettingsError, match=r"default\.bulkhead\.max_concurrent.*'many'"):
        rc.AsyncClient()


def test_host_patterns_are_normalised() -> None:
    settings = rc.ResilienceSettings.from_mapping(
        {"dependencies": {"p": {"hosts": ["Pay.Internal.", "[::1]:8080", "*.Svc.Local:443"]}}}
    )
    assert settings.dependencies["p"].hosts == ["pay.internal", "[::1]:8080", "*.svc.local:443"]


def test_policies_are_immutable() -> None:
    policy = rc.TimeoutPolicy()
    with pytest.raises(ValueError, match="frozen"):
        policy.total = 1.0  # type: ignore[misc]


def test_a_dependency_and_default_must_be_valid_together() -> None:
    with pytest.raises(rc.SettingsError, match="'pay' combined with default is invalid"):
        rc.ResilienceSettings.from_mapping(
            {
                "default": {"retry": {"backoff_base": 1.0}},
                "dependencies": {"pay": {"hosts": ["pay.internal"], "retry": {"backoff_max": 0.5}}},
            }
        )


def test_dependency_names_are_lower_case_so_the_environment_can_address_them() -> None:
    with pytest.raises(rc.SettingsError, match="'Payments' must be lower-case"):
        rc.ResilienceSettings.from_mapping(
            {"dependencies": {"Payments": {"hosts": ["p.internal"]}}}
        )


def test_keepalive_cannot_exceed_connections() -> None:
    with pytest.raises(rc.SettingsError, match=r"max_keepalive \(5\) must be <= max_connections"):
        rc.ResilienceSettings.from_mapping(
            {"default": {"pool": {"max_connections": 2, "max_keepalive": 5}}}
        )


def test_an_environment_value_that_is_not_json_gives_a_settings_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESILIENT_CLIENT_DEPENDENCIES__SEARCH__HOSTS", "search.internal")
    with pytest.raises(rc.SettingsError, match="written as JSON"):
        rc.ResilienceSettings.from_environment()


def test_a_bad_value_from_the_environment_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENT_CLIENT_DEFAULT__TIMEOUT__CONNECT", "-2")
    with pytest.raises(rc.SettingsError) as caught:
        rc.ResilienceSettings.from_mapping({"default": {"timeout": {"total": 2.0}}})
    assert "[from RESILIENT_CLIENT_DEFAULT__TIMEOUT__CONNECT]" in str(caught.value)


def test_only_values_from_the_environment_are_tagged_with_their_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ok.toml"
    path.write_text("[default.timeout]\ntotal = 2.0\n")
    monkeypatch.setenv("RESILIENT_CLIENT_DEFAULT__TIMEOUT__ATTEMPT", "abc")
    with pytest.raises(rc.SettingsError) as caught:
        rc.ResilienceSettings.from_toml(path)
    assert "default.timeout.attempt" in str(caught.value)
    assert "[from RESILIENT_CLIENT_DEFAULT__TIMEOUT__ATTEMPT]" in str(caught.value)
    monkeypatch.delenv("RESILIENT_CLIENT_DEFAULT__TIMEOUT__ATTEMPT")
    for data in (
        {"dependencies": {"a": {"hosts": ["x.internal"]}, "b": {"hosts": ["x.internal"]}}},
        {"dependencies": {"Search": {"hosts": ["s.internal"]}}},
    ):
        with pytest.raises(rc.SettingsError) as caught:
            rc.ResilienceSettings.from_mapping(data)
        assert "[from" not in str(caught.value)


def test_a_dependency_name_cannot_hold_the_nested_delimiter() -> None:
    with pytest.raises(rc.SettingsError, match="without '__'"):
        rc.ResilienceSettings.from_mapping({"dependencies": {"a__b": {"hosts": ["x.internal"]}}})
    assert rc.ResilienceSettings.from_mapping(
        {"dependencies": {"a_b-c": {"hosts": ["x.internal"]}}}
    ).dependencies
