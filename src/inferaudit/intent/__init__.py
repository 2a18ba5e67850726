"""Intent: what was promised (claims, catalog, roofline) and how it reconciles with evidence.

May import: ``inferaudit.errors``, ``inferaudit.home``, ``inferaudit.measure`` (protocol types)
and ``inferaudit.seal`` (signing, verified runs). Never the load engine, judges' internals, the
twin or the CLI.
"""
