"""Cookies work as in httpx, without the jar's per-response cost when none is set.

httpx's own cookie tests run against rc.AsyncClient too (tests/test_httpx_compat.py);
these check, against a real server, that the skip (resilient_client/_cookies.py)
never loses a cookie and never bypasses a jar that wants every response.
"""

from __future__ import annotations

from http.cookiejar import CookieJar, LWPCookieJar
from typing import Any

import httpx
import pytest

import resilient_client as rc
from resilient_client.testing._upstream import Upstream

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_resilience_env")]


class CountingJar(CookieJar):
    """A jar with extraction of its own: it counts every response it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.responses = 0

    def extract_cookies(self, response: Any, request: Any) -> None:
        self.responses += 1
        super().extract_cookies(response, request)


@pytest.fixture
def jar_hand_overs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URL of every response httpx wraps for a cookie jar (it does so only to extract)."""
    wrapped: list[str] = []
    original = httpx.Cookies._CookieCompatResponse

    class Counting(original):  # type: ignore[misc, valid-type]
        def __init__(self, response: httpx.Response) -> None:
            wrapped.append(str(response.request.url))
            super().__init__(response)

    monkeypatch.setattr(httpx.Cookies, "_CookieCompatResponse", Counting)
    return wrapped


async def test_a_cookie_set_by_a_response_is_sent_on_the_next_request(
    upstream: Upstream, jar_hand_overs: list[str]
) -> None:
    async with rc.AsyncClient(base_url=upstream.url(0)) as client:
        await client.get("/", params={"set_cookie": "session=abc; Path=/"})
        assert client.cookies["session"] == "abc"
        await client.get("/next")
    assert upstream.recent[-1].headers["cookie"] == "session=abc"
    assert len(jar_hand_overs) == 1  # the response that set it; /next set none


async def test_a_response_that_sets_no_cookie_never_reaches_the_jar(
    upstream: Upstream, jar_hand_overs: list[str]
) -> None:
    async with rc.AsyncClient(base_url=upstream.url(0), cookies={"kept": "1"}) as client:
        for _ in range(3):
            response = await client.get("/")
            assert response.status_code == 200
        assert dict(client.cookies) == {"kept": "1"}
    assert jar_hand_overs == []
    assert upstream.recent[-1].headers["cookie"] == "kept=1"


async def test_a_jar_given_to_the_client_stays_the_one_it_fills(upstream: Upstream) -> None:
    jar = LWPCookieJar()  # the standard library's own subclass extracts as CookieJar does
    async with rc.AsyncClient(base_url=upstream.url(0), cookies=jar) as client:
        assert client.cookies.jar is jar
        await client.get("/", params={"set_cookie": "token=xyz; Path=/"})
    assert [(cookie.name, cookie.value) for cookie in jar] == [("token", "xyz")]


async def test_a_jar_with_extraction_of_its_own_sees_every_response(upstream: Upstream) -> None:
    jar = CountingJar()
    async with rc.AsyncClient(base_url=upstream.url(0), cookies=jar) as client:
        await client.get("/")
        await client.get("/", params={"set_cookie": "a=1; Path=/"})
    assert jar.responses == 2
    assert [(cookie.name, cookie.value) for cookie in jar] == [("a", "1")]


async def test_a_jar_patched_on_the_instance_sees_every_response(upstream: Upstream) -> None:
    jar = CookieJar()
    seen: list[str] = []
    extract = jar.extract_cookies

    def spy(response: Any, request: Any) -> None:
        seen.append(request.get_full_url())
        extract(response, request)

    jar.extract_cookies = spy  # type: ignore[method-assign]
    async with rc.AsyncClient(base_url=upstream.url(0), cookies=jar) as client:
        await client.get("/plain")
    assert seen == [upstream.url(0, "/plain")]


async def test_cookies_assigned_later_are_sent_and_keep_the_skip(
    upstream: Upstream, jar_hand_overs: list[str]
) -> None:
    async with rc.AsyncClient(base_url=upstream.url(0)) as client:
        client.cookies = {"assigned": "yes"}
        assert isinstance(client.cookies, httpx.Cookies)
        await client.get("/")
        assert upstream.recent[-1].headers["cookie"] == "assigned=yes"
        await client.get("/", params={"set_cookie": "more=2; Path=/"})
        assert dict(client.cookies) == {"assigned": "yes", "more": "2"}
    assert len(jar_hand_overs) == 1


async def test_a_redirect_that_sets_a_cookie_keeps_it_for_the_next_hop(upstream: Upstream) -> None:
    target = upstream.url(0, "/landed")
    async with rc.AsyncClient(base_url=upstream.url(0), follow_redirects=True) as client:
        response = await client.get(
            "/", params={"status": 302, "location": target, "set_cookie": "hop=1; Path=/"}
        )
    assert response.status_code == 200
    assert upstream.recent[-1].target == "/landed"
    assert upstream.recent[-1].headers["cookie"] == "hop=1"
