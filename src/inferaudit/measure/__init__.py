"""Measure: from a frozen protocol to records on disk and the summary computed from them.

Contract: ``protocol`` (RunSpec), ``workload`` (what is sent), ``load/`` (schedule, SSE client,
runner), ``records`` (one line per finished request), ``metrics``/``stats`` (pure functions of
records + protocol), ``selftest``, ``probes`` (extra traffic the judges need) and ``fingerprint``
(a reference model's answers).

May import: ``inferaudit.errors``, ``inferaudit.home`` and itself. Nothing above it (judge, seal,
intent, present, audit, cli) and never the twin.
"""
