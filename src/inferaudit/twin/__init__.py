"""The twin: a SIMULATED OpenAI-compatible endpoint, honest or adversarial (DESIGN §8).

- ``text.py``: the twin's own deterministic "model" (words from a fixed vocabulary) and token rule;
- ``engine.py``: when tokens come out (fixed TTFT/TPOT, or continuous batching on the roofline);
- ``behaviours.py``: the adversarial behaviours' names and parameters (``NAME[:key=value,...]``);
- ``cheats.py``: the behaviours that change what is served, as hooks the server calls in order;
- ``config.py``: ``TwinConfig`` (what one server serves with) and the simulation labels;
- ``request.py``: request parsing into the parameters honoured; OpenAI-shaped errors;
- ``writer.py``: the twin's own SSE writer (and the stream-shape behaviours);
- ``truth.py``: the truth file (what the twin really did, per request);
- ``prefix.py``: the truth side's prefix-cache view (16-token chained block hashes, vLLM's idea);
- ``server.py``: the aiohttp app and routing; ``TwinServer`` runs it in-process (async);
- ``options.py``: ``TwinOptions`` (typed, JSON) and ``build`` -> ``TwinConfig`` (CLI and library);
- ``launch.py``: ``start_twin(TwinOptions)`` runs ``python -m inferaudit.twin`` as a child process
  (options as JSON on stdin, readiness as JSON on a pipe: ``ready.py``, ``__main__.py``).

It imports only ``intent.catalog``, ``intent.roofline`` and ``errors`` from inferaudit: it shares
no code with the load client it is used to test. Nothing but ``audit`` (the demo), the CLI and
tests imports it.
"""
