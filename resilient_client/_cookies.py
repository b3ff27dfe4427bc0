"""The client's cookie store, without its per-response cost when a response sets no cookie.

httpx hands every response to its cookie jar (``Cookies.extract_cookies``).
Before the jar looks for a ``Set-Cookie`` header, httpx wraps the request in a
``urllib.request.Request`` (copying every request header into it) and the
standard library builds an ``email.message.Message`` of the response headers,
twice: about 150 Python calls, 5 to 8% of the client-side instructions of a
small request (benchmarks/results/2026-12-01.md), spent on every response,
though most responses between services set no cookie. The jar then finds no
cookie header and stores nothing.

:class:`ResponseCookies` is ``httpx.Cookies`` with one change: a response with
neither ``Set-Cookie`` nor ``Set-Cookie2`` is not handed to the jar, when the jar
extracts cookies as the standard library's does (then that hand-over changes
nothing). Every other response, and every response given to a jar with
extraction of its own, goes to the jar exactly as httpx sends it.
"""

from __future__ import annotations

from http.cookiejar import CookieJar

import httpx

__all__ = ["ResponseCookies"]

_COOKIE_HEADERS = (b"set-cookie", b"set-cookie2")


class ResponseCookies(httpx.Cookies):
    """``httpx.Cookies`` that skips the jar for responses that set no cookie."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if _sets_no_cookie(response.headers) and _extracts_as_standard(self.jar):
            return
        super().extract_cookies(response)


def _sets_no_cookie(headers: httpx.Headers) -> bool:
    # The headers' own list of (raw name, lowercased name, value), compared as
    # bytes: ``name in headers`` decodes every header to find their encoding
    # first. If a future httpx keeps them otherwise, the public lookup is used.
    entries = getattr(headers, "_list", None)
    if not isinstance(entries, list):
        return "set-cookie" not in headers and "set-cookie2" not in headers
    # A loop, not all() over a generator: this runs on every response.
    for _, name, _ in entries:  # noqa: SIM110
        if name in _COOKIE_HEADERS:
            return False
    return True


def _extracts_as_standard(jar: CookieJar) -> bool:
    """Whether the jar extracts cookies as ``http.cookiejar.CookieJar`` does.

    Its subclasses in the standard library do (``LWPCookieJar``,
    ``MozillaCookieJar``); a jar that overrides either method, on its class or on
    itself (a test's mock), may want every response.
    """
    kind = type(jar)
    if kind is not CookieJar and (
        kind.extract_cookies is not CookieJar.extract_cookies
        or kind.make_cookies is not CookieJar.make_cookies
    ):
        return False
    own = getattr(jar, "__dict__", {})
    return "extract_cookies" not in own and "make_cookies" not in own
