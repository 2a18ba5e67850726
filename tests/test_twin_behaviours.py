"""Each adversarial behaviour of the twin observably does what it says (client view + truth)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from inferaudit.twin import text
from inferaudit.twin.behaviours import parse_behaviours
from inferaudit.twin.engine import EngineConfig, FixedEngine
from inferaudit.twin.server import SWAP_SUFFIX, TwinConfig
from test_twin import MODEL, PROMPT, Reply, call, completion_body, read_truth, with_twin


def twin(
    tmp_path: Path, *behave: str, ttft_ms: float = 30.0, tpot_ms: float = 2.0, **kw: Any
) -> tuple[TwinConfig, Path]:
    tmp_path.mkdir(exist_ok=True)
    truth = tmp_path / "truth.jsonl"
    config = TwinConfig(
        engine=FixedEngine(ttft_ms, tpot_ms),
        model_name=MODEL,
        behaviours=parse_behaviours(list(behave)),
        truth_path=truth,
        **kw,
    )
    return config, truth


def stream_body(
    api: str = "completions", prompt: str = PROMPT, **params: Any
) -> tuple[str, dict[str, Any]]:
    defaults = {
        "max_tokens": 20,
        "ignore_eos": True,
        "seed": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return completion_body(api, prompt, **(defaults | params))


async def sequential(
    session: aiohttp.ClientSession, url: str, bodies: list[tuple[str, dict[str, Any]]]
) -> list[Reply]:
    return [await call(session, url, path, body) for path, body in bodies]


def ttft_ms(line: dict[str, Any]) -> float:
    return (line["first_sent_ns"] - line["arrival_ns"]) / 1e6


def test_response_cache_replays_identical_and_fast(tmp_path: Path) -> None:
    config, truth = twin(tmp_path, "response-cache", ttft_ms=50.0)
    a, b, c, d = with_twin(
        config,
        lambda s, u: sequential(
            s, u, [stream_body(), stream_body(), stream_body(seed=6), stream_body(max_tokens=8)]
        ),
    )
    # the default key ignores the seed (a cheat's cache would): same text for seed 6
    assert a.text() == b.text() == c.text() and a.usage() == b.usage()
    assert len(d.pieces()) == 8
    first, second, other, shorter = read_truth(truth)
    hits = [line["cache_hit"] for line in (first, second, other, shorter)]
    assert hits == [False, True, True, False]
    assert second["behaviours"] == ["response-cache"]
    assert ttft_ms(first) >= 50.0 and ttft_ms(shorter) >= 50.0
    # replayed: 1 ms, no engine work (a ratio: a busy machine delays both alike)
    assert ttft_ms(second) < ttft_ms(first) / 2 and ttft_ms(other) < ttft_ms(first) / 2
    assert second["tokens_generated"] == 20
    # key=body: another seed is another request
    config, truth = twin(tmp_path / "body", "response-cache:key=body", ttft_ms=50.0)
    a, b, c = with_twin(
        config, lambda s, u: sequential(s, u, [stream_body(), stream_body(), stream_body(seed=6)])
    )
    assert a.text() == b.text() != c.text()
    assert [line["cache_hit"] for line in read_truth(truth)] == [False, True, False]


def test_prefix_cache_cuts_ttft_for_a_shared_prefix(tmp_path: Path) -> None:
    config, truth = twin(tmp_path, "prefix-cache", ttft_ms=200.0)
    head = " ".join(f"w{i}" for i in range(64))
    prompts = [
        head + " " + " ".join(["tail"] * 16),
        head + " " + " ".join(["other"] * 16),
        " ".join(f"fresh{i}" for i in range(80)),
    ]
    with_twin(config, lambda s, u: sequential(s, u, [stream_body(prompt=p) for p in prompts]))
    cold, warm, fresh = read_truth(truth)
    assert (cold["cached_prompt_tokens"], warm["cached_prompt_tokens"]) == (0, 64)
    assert fresh["cached_prompt_tokens"] == 0
    assert ttft_ms(cold) >= 200.0 and ttft_ms(fresh) >= 200.0
    # 20% of the prompt left to prefill (a ratio to the cold prefill, not a wall-clock bound)
    assert 200.0 * 16 / 80 <= ttft_ms(warm) < ttft_ms(cold) / 2


def test_prefix_cache_in_engine_mode_skips_prefill(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    engine = EngineConfig.from_catalog("L20", "llama-3.1-8b", efficiency=0.5)
    config = TwinConfig(
        engine=engine,
        model_name=MODEL,
        truth_path=truth,
        behaviours=parse_behaviours(["prefix-cache"]),
    )
    head = " ".join(f"w{i}" for i in range(1984))
    prompts = [head + " " + " ".join(["a"] * 16), head + " " + " ".join(["b"] * 16)]
    with_twin(
        config,
        lambda s, u: sequential(s, u, [stream_body(prompt=p, max_tokens=2) for p in prompts]),
    )
    cold, warm = read_truth(truth)
    assert warm["cached_prompt_tokens"] == 1984
    # 2000 tokens of prefill (~0.54 s on an L20 at efficiency 0.5) vs 100 (the 5% floor)
    assert ttft_ms(cold) > 4 * ttft_ms(warm)


def test_early_stop_with_and_without_lie(tmp_path: Path) -> None:
    for lie, reason in ((False, "stop"), (True, "length")):
        config, truth = twin(tmp_path / str(lie), f"early-stop:lie={str(lie).lower()}")
        replies = with_twin(
            config, lambda s, u: sequential(s, u, [stream_body(), stream_body(stream=False)])
        )
        for r in replies:
            assert len(r.text().split()) == 12  # 60% of the 20 asked with ignore_eos
            assert r.finish_reason() == reason
            assert r.usage()["completion_tokens"] == 12
        for line in read_truth(truth):
            assert line["true_finish"] == "early-stop" and line["tokens_generated"] == 12


def test_usage_inflate_reports_more_than_sent(tmp_path: Path) -> None:
    config, truth = twin(tmp_path, "usage-inflate:ratio=0.5")
    replies = with_twin(
        config,
        lambda s, u: sequential(s, u, [stream_body(), stream_body(api="chat", stream=False)]),
    )
    for r in replies:
        assert len(r.text().split()) == 20
        assert r.usage()["completion_tokens"] == 30
    assert [(ln["tokens_generated"], ln["tokens_reported"]) for ln in read_truth(truth)] == [
        (20, 30),
        (20, 30),
    ]


def test_role_first_chunk_is_instant_and_empty(tmp_path: Path) -> None:
    config, truth = twin(tmp_path, "role-first-chunk", ttft_ms=150.0)
    replies = with_twin(
        config, lambda s, u: sequential(s, u, [stream_body(), stream_body(api="chat")])
    )
    for r in replies:
        t0, first = r.events[0]
        choice = first["choices"][0]
        assert choice.get("text", "") == "" and not choice.get("delta", {}).get("content")
        content_t = next(
            t
            for t, e in r.events
            if e["choices"]
            and (e["choices"][0].get("text") or e["choices"][0].get("delta", {}).get("content"))
        )
        early, real = (t0 - r.sent_ns) / 1e6, (content_t - r.sent_ns) / 1e6
        assert early < real / 2 and real >= 150.0
        assert len(r.pieces()) == 20
    assert all("role-first-chunk" in ln["behaviours"] for ln in read_truth(truth))


def test_usage_inflate_add_one_token(tmp_path: Path) -> None:
    config, truth = twin(tmp_path, "usage-inflate:ratio=0,add=1")
    (r,) = with_twin(config, lambda s, u: sequential(s, u, [stream_body()]))
    assert len(r.text().split()) == 20 and r.usage()["completion_tokens"] == 21
    assert [(ln["tokens_generated"], ln["tokens_reported"]) for ln in read_truth(truth)] == [
        (20, 21)
    ]


def test_split_first_token_sends_a_fragment_at_once(tmp_path: Path) -> None:
    config, truth = twin(tmp_path, "split-first-token:chars=2", ttft_ms=150.0)
    replies = with_twin(
        config, lambda s, u: sequential(s, u, [stream_body(), stream_body(api="chat")])
    )
    for r in replies:
        content = [
            (t, e["choices"][0].get("text") or e["choices"][0].get("delta", {}).get("content"))
            for t, e in r.events
            if e["choices"]
            and (e["choices"][0].get("text") or e["choices"][0].get("delta", {}).get("content"))
        ]
        (t0, head), (t1, rest) = content[0], content[1]
        words = r.text().split()
        assert len(words) == 20 and len(content) == 21  # the fragment is an extra event
        assert head == " " + words[0][:1] and head + rest == " " + words[0]
        # the fragment at once, the rest of the first token after the real TTFT
        early, real = (t0 - r.sent_ns) / 1e6, (t1 - r.sent_ns) / 1e6
        assert early < real / 2 and real >= 150.0
    assert all("split-first-token" in ln["behaviours"] for ln in read_truth(truth))


def test_burst_holds_tokens_and_flushes_together(tmp_path: Path) -> None:
    config, truth = twin(tmp_path, "burst:every=0", ttft_ms=20.0, tpot_ms=10.0)
    (r,) = with_twin(config, lambda s, u: sequential(s, u, [stream_body()]))
    times = [t for t, e in r.events if e["choices"] and e["choices"][0]["text"]]
    assert len(times) == 20
    # tokens 2..20 were produced over 190 ms but arrive within a few ms of each other
    held = (times[1] - times[0]) / 1e6
    assert (times[-1] - times[1]) / 1e6 < held / 5 and held >= 150.0
    (line,) = read_truth(truth)
    assert (line["token_ns"][-1] - line["arrival_ns"]) / 1e6 >= 20.0 + 19 * 10.0  # produced
    assert len(set(line["sent_ns"][1:])) == 1  # one write for all held tokens
    config, truth = twin(tmp_path / "g", "burst:every=5", ttft_ms=5.0, tpot_ms=2.0)
    with_twin(config, lambda s, u: sequential(s, u, [stream_body()]))
    (line,) = read_truth(truth)
    writes = [line["sent_ns"].count(t) for t in dict.fromkeys(line["sent_ns"])]
    assert writes == [1, 5, 5, 5, 4]


def test_model_swap_after_n_requests(tmp_path: Path) -> None:
    config, truth = twin(tmp_path, "model-swap:after=2")
    body = stream_body(temperature=0.0)
    replies = with_twin(config, lambda s, u: sequential(s, u, [body, body, body]))
    honest = text.complete(
        MODEL, PROMPT, seed=0, temperature=0.0, max_tokens=20, ignore_eos=True
    ).text()
    assert replies[0].text() == replies[1].text() == honest != replies[2].text()
    assert len(replies[2].text().split()) == 20
    identities = [ln["identity"] for ln in read_truth(truth)]
    assert identities == [MODEL, MODEL, MODEL + SWAP_SUFFIX]


def test_model_swap_above_concurrency(tmp_path: Path) -> None:
    config, truth = twin(tmp_path, "model-swap:after=1000,above=2", ttft_ms=100.0)

    async def go(session: aiohttp.ClientSession, url: str) -> list[Reply]:
        path, body = stream_body(temperature=0.0)
        return list(await asyncio.gather(*(call(session, url, path, body) for _ in range(4))))

    replies = with_twin(config, go)
    swapped = [ln for ln in read_truth(truth) if ln["identity"].endswith(SWAP_SUFFIX)]
    assert len(swapped) == 2  # the third and fourth in flight
    assert len({r.text() for r in replies}) == 2


def _concurrent(n: int, **params: Any):  # type: ignore[no-untyped-def]
    async def go(session: aiohttp.ClientSession, url: str) -> list[Reply]:
        path, body = stream_body(**params)
        return list(await asyncio.gather(*(call(session, url, path, body) for _ in range(n))))

    return go


def test_shed_under_load_429_503_and_truncate(tmp_path: Path) -> None:
    for mode in ("429", "503"):
        config, truth = twin(
            tmp_path / mode, f"shed-under-load:threshold=2,mode={mode}", ttft_ms=100.0
        )
        replies = with_twin(config, _concurrent(5))
        statuses = sorted(r.status for r in replies)
        assert statuses == [200, 200, int(mode), int(mode), int(mode)]
        shed = [r for r in replies if r.status != 200]
        assert all(r.body is not None and "error" in r.body for r in shed)
    config, truth = twin(tmp_path / "t", "shed-under-load:threshold=2,mode=truncate", ttft_ms=100.0)
    replies = with_twin(config, _concurrent(5))
    complete = [r for r in replies if r.done]
    cut = [r for r in replies if not r.done]
    assert len(complete) == 2 and len(cut) == 3
    for r in cut:
        assert r.status == 200 and len(r.pieces()) == 10
        assert r.finish_reason() is None and r.usage() is None
    assert sorted(ln["true_finish"] for ln in read_truth(truth)) == [
        "length",
        "length",
        "truncated",
        "truncated",
        "truncated",
    ]


def test_ignore_params_ignores_eos_min_tokens_and_seed(tmp_path: Path) -> None:
    config, truth = twin(tmp_path, "ignore-params", eos_mean=20.0, tpot_ms=0.0, ttft_ms=1.0)
    bodies = [stream_body(max_tokens=64, min_tokens=64, seed=9) for _ in range(6)]
    replies = with_twin(config, lambda s, u: sequential(s, u, bodies))
    lengths = [len(r.pieces()) for r in replies]
    assert any(n < 64 for n in lengths)  # EOS despite ignore_eos and min_tokens
    assert any(r.finish_reason() == "stop" for r in replies)
    assert len({r.text() for r in replies}) == 6  # same seed, different texts
    honest_config, _ = twin(tmp_path / "h", eos_mean=20.0, tpot_ms=0.0, ttft_ms=1.0)
    honest = with_twin(honest_config, lambda s, u: sequential(s, u, bodies[:2]))
    assert [len(r.pieces()) for r in honest] == [64, 64] and honest[0].text() == honest[1].text()
    assert all("ignore-params" in ln["behaviours"] for ln in read_truth(truth))
