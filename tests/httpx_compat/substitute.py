"""pytest plugin: run httpx's own test suite with ``resilient_client.AsyncClient``.

Loaded with ``-p httpx_compat.substitute`` and ``<repo>/tests`` on ``PYTHONPATH``
(see tests/test_httpx_compat.py). The top-level name ``httpx_compat`` is used
rather than ``tests.httpx_compat`` because httpx's own test suite is a package
called ``tests`` too (its conftest does ``from tests.concurrency import ...``).

pytest imports ``-p`` plugins while it parses the command line, before any
conftest or test module, so the swap is in place before httpx's test modules
evaluate things like ``@pytest.mark.parametrize("client", [httpx.Client,
httpx.AsyncClient])`` at collection time.
"""

from __future__ import annotations

from pathlib import Path

import httpx

import resilient_client

ORIGINAL_ASYNC_CLIENT = httpx.AsyncClient


def _check_substituted(when: str) -> None:
    # Not ``assert``: this must hold under ``python -O`` too.
    if httpx.AsyncClient is not resilient_client.AsyncClient:
        raise RuntimeError(f"httpx.AsyncClient is not resilient_client.AsyncClient {when}")


if not issubclass(resilient_client.AsyncClient, ORIGINAL_ASYNC_CLIENT):
    raise RuntimeError("resilient_client.AsyncClient is not an httpx.AsyncClient subclass")
# Only the public name is swapped: httpx's own modules never look ``AsyncClient`` up on
# the ``httpx`` package, and resilient_client subclasses the original class object.
httpx.AsyncClient = resilient_client.AsyncClient  # type: ignore[misc]
_check_substituted("after the swap")


def pytest_report_header(config: object) -> list[str]:
    # tests/test_httpx_compat.py reads these lines back from the run's output.
    return [
        f"httpx {httpx.__version__} from {Path(httpx.__file__).resolve()}",
        f"resilient_client from {Path(resilient_client.__file__).resolve()}",
        "httpx.AsyncClient is resilient_client.AsyncClient: "
        f"{httpx.AsyncClient is resilient_client.AsyncClient}",
    ]


def pytest_collection_finish(session: object) -> None:
    # Again after collection: no conftest or test module may have undone the swap.
    _check_substituted("after collection")
