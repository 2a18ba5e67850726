"""The twin's ``GET /metrics`` (``twin/metrics.py``): vLLM-named Prometheus text that
``prometheus_client`` parses, whose counters equal the truth file's totals exactly; and the two
behaviours that make the counters disagree with the client (``shared-traffic``,
``cache-answers``). Twins run in this process on 127.0.0.1 (``twin.server.TwinServer``)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferaudit.errors import ConfigError
from inferaudit.twin import text
from inferaudit.twin.behaviours import parse_behaviours
from inferaudit.twin.config import TwinConfig
from inferaudit.twin.engine import EngineConfig, FixedEngine
from inferaudit.twin.server import TwinServer
from test_twin import MODEL, Reply, call, read_truth

WORDS = text.VOCABULARY
COUNTERS = (
    "vllm:request_success",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
)
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc")


def parse(body: str) -> dict[str, float]:
    """Family name (as prometheus_client names it: counters without ``_total``) -> the sum of
    its samples' values (``_created`` series are not written by the twin)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        out[family.name] = sum(s.value for s in family.samples)
    return out


async def scrape(session: aiohttp.ClientSession, base_url: str) -> tuple[str, str]:
    """``GET /metrics`` (no API key): its Content-Type and text."""
    async with session.get(base_url.removesuffix("/v1") + "/metrics") as resp:
        assert resp.status == 200
        return resp.headers["Content-Type"], await resp.text()


def serve(config: TwinConfig, fn: Callable[[aiohttp.ClientSession, str], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with TwinServer(config) as server, aiohttp.ClientSession() as session:
            return await fn(session, server.base_url)

    return asyncio.run(main())


def config(truth: Path, *behave: str, **kw: Any) -> TwinConfig:
    return TwinConfig(
        engine=kw.pop("engine", FixedEngine(2.0, 0.5)),
        model_name=MODEL,
        behaviours=parse_behaviours(list(behave)),
        truth_path=truth,
        **kw,
    )


def mixed_requests() -> list[tuple[str, dict[str, Any]]]:
    """Completions and chat, streamed and not, EOS allowed (natural lengths vary), and prompts
    sharing a 32-token prefix (two 16-token blocks) so prefix hits are not zero; one refused
    (unknown model) and one that is not JSON: neither reaches the engine."""
    shared = " ".join(WORDS[100:132])
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(12):
        prompt = f"{shared} {' '.join(WORDS[200 + 7 * i : 205 + 7 * i])}"
        body: dict[str, Any] = {"model": MODEL, "max_tokens": 6 + i, "seed": i}
        if i % 3 == 0:
            body["ignore_eos"] = True
        if i % 2:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        if i % 4 == 1:
            out.append(
                ("/chat/completions", body | {"messages": [{"role": "user", "content": prompt}]})
            )
        else:
            out.append(("/completions", body | {"prompt": prompt}))
    out.append(("/completions", {"model": "no-such-model", "prompt": "a b c"}))
    return out


async def send_all(
    session: aiohttp.ClientSession, url: str, requests: list[tuple[str, dict[str, Any]]]
) -> list[Reply]:
    replies = [await call(session, url, path, body) for path, body in requests]
    replies.append(await call(session, url, "/completions", b"{not json"))
    return replies


def engine_totals(truth: list[dict[str, Any]]) -> dict[str, float]:
    """What ``metrics.py`` says the counters hold: the truth lines that reached the engine."""
    reached = [t for t in truth if t["status"] == 200 and not t["cache_hit"]]
    prompt = sum(t["prompt_tokens"] for t in reached)
    return {
        "vllm:request_success": len(reached),
        "vllm:prompt_tokens": prompt,
        "vllm:generation_tokens": sum(t["tokens_generated"] for t in reached),
        "vllm:prefix_cache_queries": prompt,
        "vllm:prefix_cache_hits": sum(t["prefix_hit_tokens"] for t in reached),
    }


Scraped = tuple[dict[str, float], dict[str, float], list[dict[str, Any]], str, list[Reply]]


def run_mixed(tmp_path: Path, *behave: str, engine: EngineConfig | None = None) -> Scraped:
    """Scrape, send ``mixed_requests``, scrape: (before, after, truth, Content-Type, replies)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    truth_path = tmp_path / "truth.jsonl"

    async def go(session: aiohttp.ClientSession, url: str) -> tuple[str, str, str, list[Reply]]:
        kind, before = await scrape(session, url)
        replies = await send_all(session, url, mixed_requests())
        _, after = await scrape(session, url)
        return kind, before, after, replies

    options: dict[str, Any] = {} if engine is None else {"engine": engine}
    kind, before, after, replies = serve(config(truth_path, *behave, **options), go)
    return parse(before), parse(after), read_truth(truth_path), kind, replies


def received(replies: list[Reply]) -> int:
    """Completion tokens the client was told it received (usage), over the accepted replies."""
    usages = [r.usage() for r in replies if r.status == 200]
    assert all(u is not None for u in usages)
    return sum(u["completion_tokens"] for u in usages if u is not None)


def test_honest_counters_equal_the_truth_totals_exactly(tmp_path: Path) -> None:
    before, after, truth, kind, replies = run_mixed(tmp_path)
    assert kind.startswith("text/plain; version=0.0.4")
    # every family exists before the first request, at zero (a scrape before the load works)
    assert before == dict.fromkeys((*GAUGES, *COUNTERS), 0.0)
    assert [r.status for r in replies] == [200] * 12 + [404, 400]
    totals = engine_totals(truth)
    assert {k: after[k] for k in COUNTERS} == totals
    # the known answer: 12 accepted requests, each prompt 32 shared + 5 own words
    assert totals["vllm:request_success"] == 12
    assert totals["vllm:prompt_tokens"] == 12 * 37
    # the first prompt primes the two shared blocks, the other 11 hit both (16 tokens each)
    assert totals["vllm:prefix_cache_hits"] == 11 * 32
    # the client's own count of what it received equals the generation counter
    assert after["vllm:generation_tokens"] == received(replies)
    assert after["vllm:num_requests_running"] == 0.0


def test_finished_reason_labels_and_model_label(tmp_path: Path) -> None:
    async def go(session: aiohttp.ClientSession, url: str) -> str:
        for seed, eos in ((1, True), (2, True)):
            body = {"model": MODEL, "prompt": "a b c", "max_tokens": 5, "seed": seed,
                    "ignore_eos": eos}  # fmt: skip
            await call(session, url, "/completions", body)
        return (await scrape(session, url))[1]

    body = serve(config(tmp_path / "t.jsonl"), go)
    success = next(
        f for f in text_string_to_metric_families(body) if f.name == "vllm:request_success"
    )
    by_reason = {s.labels["finished_reason"]: s.value for s in success.samples}
    assert by_reason == {"length": 2.0, "stop": 0.0, "abort": 0.0}
    assert {s.labels["model_name"] for s in success.samples} == {MODEL}
    assert (
        f'vllm:request_success_total{{finished_reason="length",model_name="{MODEL}"}} 2.0' in body
    )


def test_metrics_needs_no_api_key(tmp_path: Path) -> None:
    async def go(session: aiohttp.ClientSession, url: str) -> tuple[int, int]:
        async with session.get(url + "/models") as models:
            status = models.status
        async with session.get(url.removesuffix("/v1") + "/metrics") as metrics:
            return status, metrics.status

    assert serve(config(tmp_path / "t.jsonl", api_key="k"), go) == (401, 200)


def test_running_gauge_and_generated_tokens_while_streaming(tmp_path: Path) -> None:
    """Mid-stream, three requests are running and the generation counter already holds the
    tokens written so far (at least the first token of each, at most all of them)."""

    async def go(
        session: aiohttp.ClientSession, url: str
    ) -> tuple[dict[str, float], dict[str, float]]:
        body = {"model": MODEL, "prompt": "a b c d", "max_tokens": 40, "ignore_eos": True,
                "stream": True}  # fmt: skip
        started = asyncio.Event()
        seen = 0

        async def one() -> None:
            nonlocal seen
            async with session.post(url + "/completions", json=body) as resp:
                async for _ in resp.content:
                    seen += 1
                    if seen >= 3 * 2:  # a few lines of every stream have arrived
                        started.set()

        tasks = [asyncio.create_task(one()) for _ in range(3)]
        await started.wait()
        during = parse((await scrape(session, url))[1])
        await asyncio.gather(*tasks)
        return during, parse((await scrape(session, url))[1])

    during, after = serve(config(tmp_path / "t.jsonl", engine=FixedEngine(2.0, 25.0)), go)
    assert during["vllm:num_requests_running"] == 3.0
    assert during["vllm:request_success"] == 0.0
    assert 1 <= during["vllm:generation_tokens"] < 120
    assert after["vllm:generation_tokens"] == 120.0 and after["vllm:num_requests_running"] == 0.0


def test_engine_mode_gauges(tmp_path: Path) -> None:
    engine = EngineConfig.from_catalog("H100-SXM", "llama-3.1-8b")
    before, after, truth, _, _ = run_mixed(tmp_path, engine=engine)
    assert before["vllm:gpu_cache_usage_perc"] == 0.0
    assert after["vllm:gpu_cache_usage_perc"] == 0.0  # every sequence finished: KV freed
    assert after["vllm:num_requests_waiting"] == 0.0
    assert {k: after[k] for k in COUNTERS} == engine_totals(truth)


def test_shared_traffic_adds_another_tenants_use_in_proportion(tmp_path: Path) -> None:
    before, after, truth, _, replies = run_mixed(tmp_path, "shared-traffic:share=0.3")
    assert before == dict.fromkeys((*GAUGES, *COUNTERS), 0.0)
    own = engine_totals(truth)
    assert {k: after[k] for k in COUNTERS} == {
        k: v + math.floor(v * 3 / 10) for k, v in own.items()
    }
    assert after["vllm:request_success"] == 12 + 3  # floor(0.3 x 12) more requests
    # what is served is the honest twin's: the same texts, byte for byte
    honest = run_mixed(tmp_path / "honest")[4]
    assert [r.text() for r in replies[:12]] == [r.text() for r in honest[:12]]
    assert all(t["behaviours"] == [] for t in truth)


def test_cache_answers_share_never_reaches_the_counters(tmp_path: Path) -> None:
    _, after, truth, _, replies = run_mixed(tmp_path, "cache-answers:share=0.3")
    answered = [t["seq"] for t in truth if "cache-answers" in t["behaviours"]]
    # the 4th, 7th and 10th accepted requests (seq = arrival order; all 12 first are accepted)
    assert answered == [4, 7, 10]
    assert all(t["cache_hit"] == ("cache-answers" in t["behaviours"]) for t in truth)
    own = engine_totals(truth)
    assert own["vllm:request_success"] == 9
    assert {k: after[k] for k in COUNTERS} == own
    # the client received more than the engine counted: the cache's answers
    cached = sum(t["tokens_generated"] for t in truth if t["cache_hit"])
    assert cached > 0 and received(replies) == after["vllm:generation_tokens"] + cached
    # same text as the engine would have written (fast, same text)
    honest = run_mixed(tmp_path / "honest")[4]
    assert [r.text() for r in replies[:12]] == [r.text() for r in honest[:12]]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cache-answers:share=0", "--behave cache-answers: share must be in (0, 1]"),
        ("cache-answers:share=1.5", "--behave cache-answers: share must be in (0, 1]"),
        ("shared-traffic:share=0", "--behave shared-traffic: share must be in (0, 100]"),
        ("shared-traffic:share=x", "--behave shared-traffic: share='x' is not a float"),
        ("cache-answers:ttft_ms=-1", "--behave cache-answers: times must be >= 0"),
    ],
)
def test_behaviour_parameters_are_checked(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_behaviours([spec])
    assert str(err.value) == message


def test_behaviour_defaults() -> None:
    b = parse_behaviours(["shared-traffic", "cache-answers"])
    assert b.names() == ["shared-traffic", "cache-answers"]
    assert b.describe() == [
        "shared-traffic(share=0.3)",
        "cache-answers(share=0.3, ttft_ms=1.0, tpot_ms=0.0)",
    ]
