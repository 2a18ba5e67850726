"""Seal: evidence (in-toto statement + DSSE), keys and trust policies, the ledger, offline verify.

Contract: ``evidence`` builds and opens bundles, ``ledger/`` is the RFC 9162 log with C2SP
checkpoints, ``verify`` checks a run directory offline and recomputes its summary and verdicts.

May import: ``inferaudit.errors``, ``inferaudit.home``, ``inferaudit.measure`` (to recompute) and
``inferaudit.judge`` (to recheck). ``ledger/`` imports nothing of ours but keys, errors and home.
"""
