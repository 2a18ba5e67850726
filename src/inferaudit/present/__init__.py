"""Present: HTML report, exports and the web dashboard, over reconciled claims and verified runs.

May import: ``inferaudit.errors``, ``inferaudit.intent``, ``inferaudit.seal``,
``inferaudit.measure`` (records, metrics, rundir) and ``inferaudit.judge`` (verdict types).
"""
