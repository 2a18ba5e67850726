"""The load engine: arrival schedules, the SSE parser, the streaming client and the runner.

* ``schedule`` — absolute open-loop arrival offsets (Poisson / constant; ``rate`` inf: all at 0);
* ``sse`` — incremental Server-Sent Events parser (bytes in, events out);
* ``client`` — one streaming request -> one ``Record`` (``stream`` reads its body);
  ``send_plans`` for a few requests from the calling process (probes, fingerprints);
* ``deadline`` — a request's timeouts (total, first byte, stall) and its cut-off (``cancelled``);
* ``preflight`` — the API key, ``GET /models`` and the endpoint check, as one-line errors;
* ``runner`` — ``run_load``: a run's requests over worker processes, every record appended to
  ``records.jsonl`` as it finishes, the end rule, client health (``measure.health``);
* ``parent`` / ``worker`` — the two sides of the runner; ``messages`` — the typed messages
  between them.

Nothing is imported here, so importing one piece does not pull in the others' dependencies.
"""
