"""Routes: a dependency's timeout and retry per "METHOD /path-glob", the first match wins."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import resilient_client as rc
from resilient_client._routes import RouteTable, parse_route_key
from resilient_client._settings import RoutePolicy
from resilient_client.testing._upstream import Upstream

pytestmark = pytest.mark.usefixtures("clean_resilience_env")


def _match(table: RouteTable[str], method: str, url: str) -> str | None:
    """What the pipeline does: the request's method and its decoded path."""
    request = httpx.Request(method, url)
    return table.match(request.method, request.url.path)


# Matching


def test_a_method_specific_key_and_an_any_method_key() -> None:
    table = RouteTable([("POST /charge/*", "charge"), ("/charge/*", "read")])
    assert _match(table, "POST", "https://api/charge/1") == "charge"
    assert _match(table, "GET", "https://api/charge/1") == "read"
    assert _match(table, "DELETE", "https://api/charge/1") == "read"
    assert _match(table, "GET", "https://api/other") is None


def test_the_first_matching_key_in_order_wins() -> None:
    table = RouteTable([("/a/*", "wide"), ("GET /a/b", "narrow")])
    assert _match(table, "GET", "https://api/a/b") == "wide"
    table = RouteTable([("GET /a/b", "narrow"), ("/a/*", "wide")])
    assert _match(table, "GET", "https://api/a/b") == "narrow"
    assert _match(table, "POST", "https://api/a/b") == "wide"


def test_a_star_matches_any_characters_slashes_included() -> None:
    table = RouteTable([("/users/*/orders", "orders"), ("/files/*", "files")])
    assert _match(table, "GET", "https://api/users/7/orders") == "orders"
    assert _match(table, "GET", "https://api/users/7/x/y/orders") == "orders"
    assert _match(table, "GET", "https://api/users//orders") == "orders"
    assert _match(table, "GET", "https://api/users/7/orders/1") is None
    assert _match(table, "GET", "https://api/files/") == "files"
    assert _match(table, "GET", "https://api/files/a/b.txt") == "files"


def test_the_query_string_is_not_matched() -> None:
    table = RouteTable([("/search", "search")])
    assert _match(table, "GET", "https://api/search?q=a&page=2") == "search"
    assert _match(table, "GET", "https://api/search?") == "search"


def test_dots_and_other_regex_metacharacters_are_literal() -> None:
    table = RouteTable([("/v1.0/report.json", "a"), ("/x/(a)+[b]{2}$^|\\.", "b")])
    assert _match(table, "GET", "https://api/v1.0/report.json") == "a"
    assert _match(table, "GET", "https://api/v1x0/reportxjson") is None
    assert table.match("GET", "/x/(a)+[b]{2}$^|\\.") == "b"
    assert table.match("GET", "/x/aa[b]{2}$^|\\.") is None


def test_trailing_slashes_are_literal() -> None:
    table = RouteTable([("/search", "exact"), ("/items/*", "below")])
    assert table.match("GET", "/search") == "exact"
    assert table.match("GET", "/search/") is None
    assert table.match("GET", "/items/") == "below"
    assert table.match("GET", "/items") is None  # '/items*' would match both (and '/itemsx')


def test_methods_are_upper_cased_and_the_path_is_compared_decoded() -> None:
    table = RouteTable([("post /caf%C3%A9/*", "café"), ("/literal/%2A", "star")])
    assert _match(table, "POST", "https://api/café/1") == "café"
    assert _match(table, "POST", "https://api/caf%C3%A9/1") == "café"
    assert _match(table, "GET", "https://api/café/1") is None
    assert table.match("GET", "/literal/*") == "star"  # %2A is a literal star
    assert table.match("GET", "/literal/x") is None


def test_a_table_without_routes_is_empty_and_matches_nothing() -> None:
    table: RouteTable[str] = RouteTable([])
    assert table.empty
    assert not table
    assert table.match("GET", "/") is None
    assert RouteTable([("/a", "a")])
    assert not RouteTable([("/a", "a")]).empty


def test_a_method_without_keys_of_its_own_uses_the_any_method_keys() -> None:
    table = RouteTable([("POST /a", "post")])
    assert table.match("GET", "/a") is None
    assert table.match("POST", "/a") == "post"


def _reference(glob: str, path: str) -> bool:
    """fnmatch with only '*': dynamic programming, no regex."""
    # reachable[j]: glob[:i] can match path[:j]
    reachable = [True] + [False] * len(path)
    for char in glob:
        if char == "*":
            for j in range(1, len(path) + 1):
                reachable[j] = reachable[j] or reachable[j - 1]
        else:
            reachable = [False] + [reachable[j] and path[j] == char for j in range(len(path))]
    return reachable[-1]


# Regex metacharacters, and a newline in paths (a decoded '%0A'); keys hold no whitespace.
_GLOB_CHARS = "ab/.*+()[]{}^$|\\"
_PATH_CHARS = _GLOB_CHARS + "\n"


@given(
    glob=st.text(alphabet=_GLOB_CHARS, max_size=10).map(lambda text: "/" + text),
    path=st.text(alphabet=_PATH_CHARS, max_size=14).map(lambda text: "/" + text),
)
def test_a_compiled_glob_matches_exactly_what_a_reference_matcher_says(
    glob: str, path: str
) -> None:
    table = RouteTable([(glob, True)])
    assert (table.match("GET", path) is True) == _reference(glob, path)


@given(
    globs=st.lists(
        st.text(alphabet="ab/*", max_size=5).map(lambda text: "/" + text),
        min_size=1,
        max_size=6,
        unique=True,
    ),
    path=st.text(alphabet="ab/", max_size=8).map(lambda text: "/" + text),
)
def test_a_table_returns_the_first_glob_the_reference_matches(globs: list[str], path: str) -> None:
    # Globs that differ only by repeated stars are one route: keep the first of each.
    distinct = list({parse_route_key(glob): glob for glob in reversed(globs)}.values())[::-1]
    table = RouteTable([(glob, index) for index, glob in enumerate(distinct)])
    expected = next((i for i, glob in enumerate(distinct) if _reference(glob, path)), None)
    assert table.match("GET", path) == expected


# Settings


def test_a_route_changes_only_what_it_sets() -> None:
    settings = rc.ResilienceSettings.from_mapping(
        {
            "default": {"retry": {"backoff_base": 0.5}, "timeout": {"connect": 0.5}},
            "dependencies": {
                "api": {
                    "hosts": ["api.internal"],
                    "timeout": {"total": 3.0},
                    "retry": {"attempts": 4},
                    "routes": {
                        "POST /charge/*": {"retry": {"attempts": 1}},
                        "/search": {"timeout": {"total": 0.5}},
                    },
                }
            },
        }
    )
    policy = settings.policy_for("api")
    routes = dict(policy.resolved_routes)
    assert list(routes) == ["POST /charge/*", "/search"]
    charge = routes["POST /charge/*"]
    assert charge.retry.attempts == 1  # its own
    assert charge.retry.backoff_base == 0.5  # default's, through the dependency
    assert charge.timeout == rc.TimeoutPolicy(total=3.0, attempt=5.0, connect=0.5)
    search = routes["/search"]
    assert search.timeout == rc.TimeoutPolicy(total=0.5, attempt=5.0, connect=0.5)
    assert search.retry == policy.retry  # the dependency's, complete
    # Compiled once per policy object, holding the complete policies.
    assert policy.route_table is policy.route_table
    assert policy.route_table.match("POST", "/charge/9") is charge
    assert policy.route_table.match("GET", "/charge/9") is None


def test_a_dependency_takes_defaults_routes_unless_it_has_its_own() -> None:
    settings = rc.ResilienceSettings.from_mapping(
        {
            "default": {"routes": {"/health": {"retry": {"attempts": 1}}}},
            "dependencies": {
                "plain": {"hosts": ["plain.internal"], "timeout": {"total": 2.0}},
                "own": {
                    "hosts": ["own.internal"],
                    "routes": {"/search": {"timeout": {"total": 0.5}}},
                },
            },
        }
    )
    # default's routes apply over default's own sections, for hosts no dependency names...
    [(key, health)] = settings.default.resolved_routes
    assert (key, health.retry.attempts, health.timeout.total) == ("/health", 1, 10.0)
    # ...and over a dependency's, for one that has no routes of its own.
    [(key, health)] = settings.policy_for("plain").resolved_routes
    assert (key, health.retry.attempts, health.timeout.total) == ("/health", 1, 2.0)
    # A dependency's own table replaces default's whole.
    assert [key for key, _ in settings.policy_for("own").resolved_routes] == ["/search"]


def test_routes_from_a_toml_file_keep_their_order(tmp_path: Path) -> None:
    path = tmp_path / "resilience.toml"
    path.write_text(
        """
[dependencies.api]
hosts = ["api.internal"]

[dependencies.api.routes."POST /charge/*"]
retry = { attempts = 1 }

[dependencies.api.routes."/charge/*"]
timeout = { total = 1.0 }

[dependencies.api.routes."/a"]
[dependencies.api.routes."/b"]
"""
    )
    policy = rc.ResilienceSettings.from_toml(path).policy_for("api")
    assert [key for key, _ in policy.resolved_routes] == ["POST /charge/*", "/charge/*", "/a", "/b"]
    charge = policy.route_table.match("POST", "/charge/1")
    assert charge is not None
    assert (charge.retry.attempts, charge.timeout.total) == (1, 10.0)
    read = policy.route_table.match("GET", "/charge/1")
    assert read is not None
    assert (read.retry.attempts, read.timeout.total) == (3, 1.0)


def test_routes_from_the_environment_as_one_json_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENT_CLIENT_DEPENDENCIES__API__HOSTS", '["api.internal"]')
    monkeypatch.setenv(
        "RESILIENT_CLIENT_DEPENDENCIES__API__ROUTES",
        json.dumps({"POST /Charge/*": {"retry": {"attempts": 1}}, "/Search": {}}),
    )
    monkeypatch.setenv("RESILIENT_CLIENT_DEFAULT__ROUTES", '{"/health": {}}')
    settings = rc.ResilienceSettings.from_environment()
    # Keys keep their case and order (only variable names are case-insensitive).
    assert list(settings.dependencies["api"].routes) == ["POST /Charge/*", "/Search"]
    assert list(settings.default.routes) == ["/health"]
    route = settings.policy_for("api").route_table.match("POST", "/Charge/1")
    assert route is not None
    assert route.retry.attempts == 1


def test_the_environments_routes_merge_key_by_key_and_come_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "resilience.toml"
    path.write_text(
        """
[dependencies.api]
hosts = ["api.internal"]
routes."/a" = { timeout = { total = 1.0 } }
routes."/b" = { timeout = { total = 2.0 } }
"""
    )
    monkeypatch.setenv(
        "RESILIENT_CLIENT_DEPENDENCIES__API__ROUTES",
        '{"/a": {"timeout": {"attempt": 0.5}}, "/c": {}}',
    )
    routes = dict(rc.ResilienceSettings.from_toml(path).policy_for("api").resolved_routes)
    # The environment's keys first, in its order; then the file's others.
    assert list(routes) == ["/a", "/c", "/b"]
    assert (routes["/a"].timeout.total, routes["/a"].timeout.attempt) == (1.0, 0.5)
    # The same with a dict in code.
    settings = rc.ResilienceSettings.from_mapping(
        {"dependencies": {"api": {"hosts": ["api.internal"], "routes": {"/b": {}, "/a": {}}}}}
    )
    assert list(settings.dependencies["api"].routes) == ["/a", "/c", "/b"]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("charge/*", "must start with '/'"),
        ("https://api.internal/charge", "without scheme or host"),
        ("GET charge", "must start with '/'"),
        ("/search?q=*", "query string is not matched"),
        ("/page#top", "fragment"),
        ("P@ST /charge", "'P@ST' is not an HTTP method"),
        ("* /charge", "leave the method out"),
        ("", "empty"),
        ("POST  /charge", "a space in the path glob"),
        (" /charge", "is not a route"),
        ("POST\t/charge", "whitespace"),
        ("/a b", "a space in the path glob"),
    ],
)
def test_an_invalid_key_fails_at_load_naming_it(key: str, reason: str) -> None:
    with pytest.raises(rc.SettingsError) as caught:
        rc.ResilienceSettings.from_mapping(
            {"dependencies": {"api": {"hosts": ["api.internal"], "routes": {key: {}}}}}
        )
    [(path, message, value)] = caught.value.problems
    assert path == f"dependencies.api.routes.{json.dumps(key)}.[key]"
    assert reason in message
    assert value == key
    assert json.dumps(key) in str(caught.value)


def test_an_invalid_key_in_default_is_named_too() -> None:
    with pytest.raises(rc.SettingsError) as caught:
        rc.AsyncClient(settings={"default": {"routes": {"search": {}}}})
    assert [p[0] for p in caught.value.problems] == ["default.routes.search.[key]"]


@pytest.mark.parametrize("section", ["breaker", "bulkhead", "rate_limit", "pool"])
def test_per_dependency_sections_cannot_be_set_per_route(section: str) -> None:
    with pytest.raises(rc.SettingsError) as caught:
        rc.ResilienceSettings.from_mapping(
            {
                "dependencies": {
                    "api": {"hosts": ["api.internal"], "routes": {"POST /a": {section: {}}}}
                }
            }
        )
    [(path, message, _)] = caught.value.problems
    assert path == 'dependencies.api.routes."POST /a"'
    assert f"{section} cannot be set per route" in message
    assert "breaker, bulkhead, rate_limit and pool" in message
    assert "the dependency as a whole" in message


@pytest.mark.parametrize("field", ["budget_ratio", "budget_min_per_second"])
def test_the_retry_budget_cannot_be_set_per_route(field: str) -> None:
    with pytest.raises(rc.SettingsError) as caught:
        rc.ResilienceSettings.from_mapping({"default": {"routes": {"/a": {"retry": {field: 1}}}}})
    [(path, message, _)] = caught.value.problems
    assert path == 'default.routes."/a"'
    assert message == (
        f"retry.{field} cannot be set per route: "
        "the retry budget bounds the retries of the dependency as a whole"
    )


def test_route_policies_given_as_objects() -> None:
    settings = rc.ResilienceSettings.from_mapping(
        {"default": {"routes": {"/a": RoutePolicy(retry=rc.RetryPolicy(attempts=1))}}}
    )
    [(_, route)] = settings.default.resolved_routes
    assert route.retry == rc.RetryPolicy(attempts=1)
    with pytest.raises(rc.SettingsError, match=r"retry\.budget_ratio cannot be set per route"):
        rc.ResilienceSettings.from_mapping(
            {"default": {"routes": {"/a": {"retry": rc.RetryPolicy(budget_ratio=1)}}}}
        )


def test_other_unknown_settings_in_a_route_are_unknown() -> None:
    with pytest.raises(rc.SettingsError) as caught:
        rc.ResilienceSettings.from_mapping({"default": {"routes": {"/a": {"retries": {}}}}})
    assert caught.value.problems == [('default.routes."/a".retries', "unknown setting", {})]


def test_bad_values_in_a_route_are_named_with_the_route() -> None:
    with pytest.raises(rc.SettingsError) as caught:
        rc.ResilienceSettings.from_mapping(
            {"default": {"routes": {"POST /a.json": {"retry": {"attempts": 0}}}}}
        )
    [(path, _, value)] = caught.value.problems
    assert (path, value) == ('default.routes."POST /a.json".retry.attempts', 0)


def test_two_keys_for_one_route_fail() -> None:
    with pytest.raises(rc.SettingsError, match="'post /a' and 'POST /a' are the same route"):
        rc.ResilienceSettings.from_mapping({"default": {"routes": {"post /a": {}, "POST /a": {}}}})


def test_a_route_valid_alone_but_not_over_its_dependency_fails() -> None:
    with pytest.raises(rc.SettingsError) as caught:
        rc.ResilienceSettings.from_mapping(
            {
                "default": {"retry": {"backoff_base": 1.0, "backoff_max": 1.0}},
                "dependencies": {
                    "api": {
                        "hosts": ["api.internal"],
                        "routes": {"/b": {"retry": {"backoff_max": 0.5}}},
                    }
                },
            }
        )
    [(_, message, _)] = caught.value.problems
    assert message == (
        "dependency 'api' route '/b' combined with its dependency is invalid: "
        "retry: backoff_max (0.5) must be >= backoff_base (1.0)"
    )


def test_a_bad_route_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESILIENT_CLIENT_DEFAULT__ROUTES", '{"/a.json": {"timeout": {"total": 0}}}')
    with pytest.raises(rc.SettingsError) as caught:
        rc.AsyncClient(settings={"default": {"timeout": {"total": 3.0}}})
    assert (
        'default.routes."/a.json".timeout.total: Input should be greater than 0 (got 0) '
        "[from RESILIENT_CLIENT_DEFAULT__ROUTES]"
    ) in str(caught.value)


def test_a_route_policy_as_given_remembers_what_it_set() -> None:
    route = RoutePolicy.model_validate({"retry": {"attempts": 1}})
    assert route.model_fields_set == {"retry"}
    assert route.retry.model_fields_set == {"attempts"}


# -- in the client, against a real server -------------------------------------------------


@pytest.mark.anyio
@pytest.mark.usefixtures("clean_resilience_env")
async def test_a_routes_retry_and_timeout_apply_to_its_requests_only(upstream: Upstream) -> None:
    settings = {
        "dependencies": {
            "api": {
                "hosts": [f"127.0.0.1:{upstream.ports[0]}"],
                "retry": {"attempts": 3, "backoff_base": 0.001, "backoff_max": 0.002},
                "breaker": {"consecutive_failures": None},
                "routes": {
                    "GET /once/*": {"retry": {"attempts": 1}},
                    "/quick/*": {"timeout": {"total": 0.1}},
                },
            }
        }
    }
    port = upstream.ports[0]
    async with rc.AsyncClient(settings=settings) as client:
        assert (await client.get(upstream.url(0, "/once/a?status=503"))).status_code == 503
        assert upstream.received[port] == 1  # the route's one attempt
        assert (await client.get(upstream.url(0, "/other?status=503"))).status_code == 503
        assert upstream.received[port] == 4  # the dependency's three
        started = time.monotonic()
        with pytest.raises(rc.DeadlineExceededError):
            await client.get(upstream.url(0, "/quick/b?delay=1"))
        assert time.monotonic() - started < 0.1 + 0.05
        # The query string is not matched: /other?x=/quick/ keeps the dependency's total.
        response = await client.get(upstream.url(0, "/other?delay=0.2&x=/quick/"))
        assert response.status_code == 200
        assert client.health()["api"]["retry"]["retries_by_reason"] == {"status 503": 2}
