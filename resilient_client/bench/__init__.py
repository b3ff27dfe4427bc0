"""``resilient-client bench``: load scenarios against a fault-injecting upstream, side by side.

The same scenario (a slow host beside a healthy one, an outage, a flapping or a
throttling host, ...) runs once per client: bare httpx, httpx with hand-written
retries and a breaker, and resilient_client with its defaults or your settings.
The report is a table in the terminal, every figure as JSON, and PNG plots; it
ends with the "do no harm" table, each host of each scenario with the library
beside bare httpx.

It needs the ``bench`` extra (``pip install 'resilient-client[bench]'``: rich
for the terminal, matplotlib for the plots); ``import resilient_client`` never
imports it. Its modules, one job each::

    _cli.py        the command line (``resilient-client``, ``python -m resilient_client``)
    _command.py    what ``bench`` and ``demo`` do once parsed: the plan, the run, the files
    _scenarios.py  the scenarios: hosts' fault profiles and the traffic, and the run options
    _clients.py    the clients compared, behind one small interface
    _load.py       the load generator: timed calls, their log, open and closed loops
    _runner.py     runs a scenario once per client against one upstream process
    _stats.py      percentiles and latency summaries
    _figures.py    the figures from the calls' logs and the upstream's counts
    _report.py     the JSON report
    _harm.py       the "do no harm" table: each host, a resilient client beside bare httpx
    _sweep.py      the concurrency sweep's table (its levels are scenarios: ``sweep-<n>``)
    _terminal.py   the terminal tables
    _plots.py      the PNG plots (matplotlib, imported only to plot)

The upstream itself is :mod:`resilient_client.testing`'s.
"""
