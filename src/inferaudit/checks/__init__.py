"""Integrity checks: each catches one way an endpoint can game a load test (see ``suite``)."""

from inferaudit.checks.verdict import Outcome, Verdict, format_verdict

__all__ = ["Outcome", "Verdict", "format_verdict"]
