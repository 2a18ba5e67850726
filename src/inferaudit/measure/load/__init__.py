"""The load engine: arrival schedules, the SSE parser, the streaming client and the runner.

* ``schedule`` — absolute open-loop arrival offsets (Poisson / constant / gamma, a ramp-up, a
  trace's own instants; ``rate`` inf: all at 0);
* ``gate`` — an open loop's ``max_concurrency`` slots (when each request got its slot);
* ``plans`` — what the workers need of a planner (single requests, multi-turn sessions);
* ``sse`` — incremental Server-Sent Events parser (bytes in, events out);
* ``client`` — one streaming request -> one ``Record`` (``stream`` reads its body);
  ``send_plans`` for a few requests from the calling process (probes, fingerprints);
* ``pool`` — keep-alive connections: warmed before the clock, checked before reuse, the one
  retry of a request the server never had whole;
* ``deadline`` — a request's timeouts (total, first byte, stall) and its cut-off (``cancelled``);
* ``preflight`` — the API key, ``GET /models`` and the endpoint check, as one-line errors;
* ``runner`` — ``run_load``: a run's requests over worker processes, every record appended to
  ``records.jsonl`` as it finishes, the end rule, client health (``measure.health``);
* ``parent`` / ``worker`` — the two sides of the runner; ``messages`` — the typed messages
  between them.

Nothing is imported here, so importing one piece does not pull in the others' dependencies.
"""
