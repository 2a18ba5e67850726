"""Judge: integrity checks, each catching one way an endpoint can game a load test.

Contract: a judge is a pure function, records (+ protocol, reference data) in, ``Verdict`` out, so
that ``verify`` recomputes every verdict offline. Traffic that a judge needs is sent by the probes
in ``inferaudit.measure.probes``.

May import: ``inferaudit.errors`` and ``inferaudit.measure`` (records, protocol, stats, tokenizer,
fingerprint), never ``inferaudit.measure.load`` and never the twin.
"""

from inferaudit.judge.verdict import Outcome, Verdict, format_verdict

__all__ = ["Outcome", "Verdict", "format_verdict"]
