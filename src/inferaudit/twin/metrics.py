"""The twin's ``GET /metrics``: what its engine really did, as vLLM's Prometheus counters.

Text exposition format 0.0.4 (``text/plain; version=0.0.4``), written here by hand (the twin
shares no code with the client, which parses it with ``prometheus_client``), every series
labelled ``model_name="<served name>"`` as vLLM labels them:

==================================  =======  ==================================================
``vllm:num_requests_running``       gauge    requests inside the engine now
``vllm:num_requests_waiting``       gauge    engine mode: sequences queued for admission over
                                             all replicas; fixed mode: 0 (nothing ever waits)
``vllm:gpu_cache_usage_perc``       gauge    engine mode: KV cache reserved / capacity over all
                                             replicas (0..1, as vLLM's); fixed mode: 0
``vllm:request_success_total``      counter  requests that reached the engine and ended, by
                                             ``finished_reason``: the one sent (``length``,
                                             ``stop``), ``abort`` when none was (the client
                                             closed, shed-under-load truncated); the three
                                             label sets always exist (0 before any request)
``vllm:prompt_tokens_total``        counter  prompt tokens (truth ``prompt_tokens``) of the
                                             requests that reached the engine, on admission
``vllm:generation_tokens_total``    counter  tokens generated: truth ``tokens_generated`` of
                                             the finished requests plus the tokens written so
                                             far by those still running
``vllm:prefix_cache_queries_total`` counter  prompt tokens looked up in the prefix cache: the
                                             prompt tokens of the requests that reached it
``vllm:prefix_cache_hits_total``    counter  of them, found: truth ``prefix_hit_tokens`` (the
                                             truth side's block-hash view, ``prefix.py``)
==================================  =======  ==================================================

A request *reaches the engine* unless it was refused (an OpenAI error before generation) or
answered in front of the engine (a response-cache or cache-under-load replay, a cache-answers
answer: truth ``cache_hit`` true). So once every request has finished, for the truth lines
``L`` with ``status`` 200 and ``cache_hit`` false, exactly: ``request_success_total = |L|``,
``prompt_tokens_total = prefix_cache_queries_total = sum(prompt_tokens)``,
``generation_tokens_total = sum(tokens_generated)`` and ``prefix_cache_hits_total =
sum(prefix_hit_tokens)``.

``shared-traffic:share=s`` (``behaviours.py``) adds another tenant's use, in proportion, to
every counter (``Cheats.other_tenant``): each shows ``own + floor(s * own)`` (``own`` the exact
value above; for requests, ``own`` is their total over every finished_reason and the extra ones
are reported under ``length``). The gauges are never changed.
"""

from __future__ import annotations

from collections.abc import Callable

from inferaudit.twin.engine import BatchEngine, FixedEngine
from inferaudit.twin.truth import Outcome

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FINISHED_REASONS = ("length", "stop", "abort")

_HELP = {
    "vllm:num_requests_running": "Number of requests in model execution batches.",
    "vllm:num_requests_waiting": "Number of requests waiting to be processed.",
    "vllm:gpu_cache_usage_perc": "KV-cache usage. 1 means 100 percent usage.",
    "vllm:request_success_total": "Count of successfully processed requests.",
    "vllm:prompt_tokens_total": "Number of prefill tokens processed.",
    "vllm:generation_tokens_total": "Number of generation tokens processed.",
    "vllm:prefix_cache_queries_total": "Prefix cache queries, in number of queried tokens.",
    "vllm:prefix_cache_hits_total": "Prefix cache hits, in number of cached tokens.",
}


def _label(value: str) -> str:
    """A label value escaped as the text format requires (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value))


class ServerCounters:
    """The engine's counters of one twin: ``start`` a request as it reaches the engine,
    ``finish`` it when its handler ends; ``exposition`` renders them."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.running: dict[int, Outcome] = {}  # by seq
        self.finished: dict[str, int] = dict.fromkeys(FINISHED_REASONS, 0)
        self.prompt_tokens = 0
        self.generated_done = 0  # tokens of the finished requests
        self.prefix_hits = 0

    def start(self, out: Outcome) -> None:
        """``out`` reached the engine (its prompt is admitted and looked up)."""
        assert out.seq not in self.running, "a request starts once or the server has a bug"
        self.running[out.seq] = out
        self.prompt_tokens += out.prompt_tokens
        self.prefix_hits += out.prefix_hit_tokens

    def finish(self, out: Outcome) -> None:
        """``out``'s handler ended; a request that never reached the engine is ignored."""
        if self.running.pop(out.seq, None) is None:
            return
        reason = out.finish_reason if out.finish_reason in ("length", "stop") else "abort"
        self.finished[reason] += 1
        self.generated_done += len(out.sent_ns)

    def generated(self) -> int:
        """Tokens generated so far: the finished requests' and those written by the rest."""
        return self.generated_done + sum(len(o.sent_ns) for o in self.running.values())

    def exposition(
        self, engine: FixedEngine | BatchEngine, other_tenant: Callable[[int], int]
    ) -> str:
        """The ``/metrics`` text now; ``other_tenant(own)``: what shared-traffic adds to a
        counter whose own value is ``own`` (0 when the behaviour is off)."""
        waiting, kv = 0, 0.0
        if isinstance(engine, BatchEngine):
            waiting = sum(len(r.waiting) for r in engine.replicas)
            capacity = engine.config.kv_capacity_bytes() * len(engine.replicas)
            kv = sum(r.kv_used for r in engine.replicas) / capacity
        model = f'model_name="{_label(self.model_name)}"'
        own_requests = sum(self.finished.values())
        requests = dict(self.finished)
        requests["length"] += other_tenant(own_requests)
        lines: list[str] = []

        def family(name: str, kind: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {_HELP[name]}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{{{labels}}} {_number(v)}" for labels, v in samples)

        family("vllm:num_requests_running", "gauge", [(model, len(self.running))])
        family("vllm:num_requests_waiting", "gauge", [(model, waiting)])
        family("vllm:gpu_cache_usage_perc", "gauge", [(model, kv)])
        family(
            "vllm:request_success_total",
            "counter",
            [(f'finished_reason="{r}",{model}', requests[r]) for r in FINISHED_REASONS],
        )
        for name, own in (
            ("vllm:prompt_tokens_total", self.prompt_tokens),
            ("vllm:generation_tokens_total", self.generated()),
            ("vllm:prefix_cache_queries_total", self.prompt_tokens),
            ("vllm:prefix_cache_hits_total", self.prefix_hits),
        ):
            family(name, "counter", [(model, own + other_tenant(own))])
        return "\n".join(lines) + "\n"
