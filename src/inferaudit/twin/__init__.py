"""The twin: a SIMULATED OpenAI-compatible endpoint, honest or adversarial (DESIGN §8).

- ``text.py``: the twin's own deterministic "model" (words from a fixed vocabulary) and token rule;
- ``engine.py``: when tokens come out (fixed TTFT/TPOT, or continuous batching on the roofline);
- ``behaviours.py``: the adversarial behaviours (``--behave NAME[:key=value,...]``);
- ``server.py``: the aiohttp app, its SSE writer and the truth file;
- ``launch.py``: ``start_twin(args)`` runs ``python -m inferaudit twin`` as a child process.

It imports only ``intent.catalog``, ``intent.roofline`` and ``errors`` from inferaudit: it shares
no code with the load client it is used to test.
"""
