"""Tools for testing code that calls HTTP dependencies through resilient_client.

Today this holds the fault-injecting upstream the library's own tests, benchmarks
and ``resilient-client bench`` run against: an HTTP/1.1 server on 127.0.0.1
(``_upstream.py``) whose ports answer as each request's query string says
(``?delay=``, ``?status=``, ``?hang=1``, ...) or as a seeded fault profile
decides (``_profiles.py``: latency with a tail, errors, hangs, drips, resets,
429 with Retry-After, outages and degradation over time; ``_wire.py`` writes
the answers). It has no public names yet; public testing tools will build on it.

It needs nothing beyond the library's own dependencies (no ``bench`` extra), and
``import resilient_client`` never imports it.
"""
