"""Intent: what was promised (claims, catalog, roofline) and how it reconciles with evidence.

May import: ``inferaudit.errors``, ``inferaudit.home``, ``inferaudit.measure`` (protocol and
summary types, the error budget), ``inferaudit.judge.verdict`` (verdict types) and
``inferaudit.seal`` (publishing, trust policies, verified runs). Never the load engine, the
judges' internals, the twin or the CLI.
"""
