"""The load engine: arrival schedules, the SSE parser, the streaming client and the runner.

* ``schedule`` — absolute open-loop arrival offsets (Poisson / constant);
* ``sse`` — incremental Server-Sent Events parser (bytes in, events out);
* ``client`` — one streaming request -> one record dict; preflight;
  ``send_plans`` for a few requests from the calling process (probes, fingerprints);
* ``runner`` — ``run_load``: a run's requests over worker processes, every
  record appended to ``records.jsonl`` as it finishes.

Nothing is imported here, so importing one piece does not pull in the others' dependencies.
"""
