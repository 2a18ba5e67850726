"""Seal: evidence (in-toto statement + DSSE), keys and trust policies, the ledger, offline verify.

Contract: ``evidence`` builds and opens statements and envelopes (v2 and v1 run layouts),
``publish`` is the one writer into the log (sign -> append -> checkpoint -> proof) for runs and
claims, ``ledger/`` is the RFC 9162 log with C2SP checkpoints, ``trust`` holds the default trust
policy and the known checkpoints (fork detection), ``verify`` checks a run directory offline
and recomputes its summary (``recompute``) and verdicts, and ``verified`` hands out
``VerifiedRun``s — the only form in which evidence leaves this package to be credited.

May import: ``inferaudit.errors``, ``inferaudit.home``, ``inferaudit.measure`` (to recompute) and
``inferaudit.judge`` (to recheck). ``ledger/`` imports nothing of ours but keys, errors and home.
"""
