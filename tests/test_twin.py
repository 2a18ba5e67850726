"""The honest twin: protocol conformance, deterministic text, timing, engine model, launcher.

The twin is tested with its own tiny aiohttp client below (NOT inferaudit's load client: a bug
shared by both would cancel out). Timing is judged from the twin's truth file, with generous
tolerances; nothing here asserts how fast the machine is.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from inferaudit.errors import ConfigError
from inferaudit.intent import catalog, roofline
from inferaudit.twin import text
from inferaudit.twin.behaviours import Behaviours, parse_behaviours
from inferaudit.twin.engine import BatchEngine, EngineConfig, FixedEngine, Job
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions
from inferaudit.twin.server import OWNED_BY, SIMULATION_HEADER, TwinConfig, TwinServer

MODEL = "twin-test"


# --- a tiny client of our own -------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    events: list[tuple[int, dict[str, Any]]]  # (receipt perf_counter_ns, JSON) of SSE data
    done: bool  # saw "data: [DONE]"
    body: dict[str, Any] | None  # non-streaming JSON
    sent_ns: int

    def pieces(self) -> list[str]:
        """Text of each content chunk (role-only / empty chunks dropped)."""
        out = []
        for _, event in self.events:
            for choice in event.get("choices", []):
                piece = choice.get("text") if "text" in choice else choice["delta"].get("content")
                if piece:
                    out.append(piece)
        return out

    def text(self) -> str:
        if self.body is not None:
            choice = self.body["choices"][0]
            return choice["text"] if "text" in choice else choice["message"]["content"]
        return "".join(self.pieces())

    def finish_reason(self) -> str | None:
        if self.body is not None:
            return self.body["choices"][0]["finish_reason"]
        reasons = [c["finish_reason"] for _, e in self.events for c in e.get("choices", [])]
        return next((r for r in reasons if r is not None), None)

    def usage(self) -> dict[str, int] | None:
        if self.body is not None:
            return self.body.get("usage")
        usages = [e["usage"] for _, e in self.events if e.get("usage")]
        return usages[-1] if usages else None


async def call(
    session: aiohttp.ClientSession,
    url: str,
    path: str,
    body: dict[str, Any] | bytes,
    headers: dict[str, str] | None = None,
) -> Reply:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    sent = time.perf_counter_ns()
    async with session.post(url + path, data=data, headers=headers or {}) as resp:
        events: list[tuple[int, dict[str, Any]]] = []
        done = False
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line:
                    continue
                assert line.startswith("data: "), line
                payload = line[len("data: ") :]
                if payload == "[DONE]":
                    done = True
                else:
                    events.append((time.perf_counter_ns(), orjson.loads(payload)))
            return Reply(resp.status, dict(resp.headers), events, done, None, sent)
        return Reply(resp.status, dict(resp.headers), [], False, await resp.json(), sent)


def completion_body(api: str, prompt: str, **params: Any) -> tuple[str, dict[str, Any]]:
    if api == "completions":
        return "/completions", {"model": MODEL, "prompt": prompt, **params}
    messages = [{"role": "user", "content": prompt}]
    return "/chat/completions", {"model": MODEL, "messages": messages, **params}


def with_twin(
    config: TwinConfig, fn: Callable[[aiohttp.ClientSession, str], Awaitable[Any]]
) -> Any:
    async def main() -> Any:
        async with TwinServer(config) as server, aiohttp.ClientSession() as session:
            return await fn(session, server.base_url)

    return asyncio.run(main())


def fixed(ttft_ms: float = 5.0, tpot_ms: float = 1.0, **kw: Any) -> TwinConfig:
    return TwinConfig(engine=FixedEngine(ttft_ms, tpot_ms), model_name=MODEL, **kw)


def read_truth(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


PROMPT = "the quick brown fox jumps over the lazy dog"


# --- text ---------------------------------------------------------------------------------


def test_text_known_answer_and_rules() -> None:
    c = text.complete(
        MODEL, "hello there you", seed=3, temperature=1.0, max_tokens=5, ignore_eos=True
    )
    # pinned: a change here changes every fingerprint recorded against the twin
    assert c.words == ("zedis", "kunman", "breabrer", "fefur", "stounton")
    assert c.finish_reason == "length"
    assert c.text() == " zedis kunman breabrer fefur stounton"
    assert text.count_prompt_tokens("  a b\tc\nd  ") == 4
    assert len(set(text.VOCABULARY)) == text.VOCAB_SIZE == 4096


def test_text_eos_min_tokens_and_greedy() -> None:
    # natural lengths vary by seed; some stop before 64 with "stop"
    outs = [text.complete(MODEL, PROMPT, seed=s, temperature=1.0, max_tokens=64) for s in range(40)]
    stops = [c for c in outs if c.finish_reason == "stop"]
    assert stops and all(len(c.words) < 64 for c in stops)
    assert all(len(c.words) == 64 for c in outs if c.finish_reason == "length")
    # min_tokens holds EOS back; ignore_eos always gives max_tokens
    for s in range(40):
        held = text.complete(MODEL, PROMPT, seed=s, temperature=1.0, max_tokens=64, min_tokens=50)
        assert len(held.words) >= 50
        full = text.complete(MODEL, PROMPT, seed=s, temperature=1.0, max_tokens=64, ignore_eos=True)
        assert len(full.words) == 64 and full.finish_reason == "length"
    # greedy ignores the seed; sampling does not; another identity is another text
    g1 = text.complete(MODEL, PROMPT, seed=1, temperature=0.0, max_tokens=16, ignore_eos=True)
    g2 = text.complete(MODEL, PROMPT, seed=2, temperature=0.0, max_tokens=16, ignore_eos=True)
    s2 = text.complete(MODEL, PROMPT, seed=2, temperature=0.7, max_tokens=16, ignore_eos=True)
    other = text.complete("other", PROMPT, seed=1, temperature=0.0, max_tokens=16, ignore_eos=True)
    assert g1 == g2 and s2 != g2 and other.words != g1.words


# --- protocol -----------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_streaming_exact_length_usage_and_done(api: str) -> None:
    async def go(session: aiohttp.ClientSession, url: str) -> Reply:
        path, body = completion_body(
            api,
            PROMPT,
            max_tokens=12,
            ignore_eos=True,
            seed=7,
            stream=True,
            stream_options={"include_usage": True},
        )
        return await call(session, url, path, body)

    r = with_twin(fixed(), go)
    assert r.status == 200 and r.done
    assert r.headers[SIMULATION_HEADER] == "simulation"
    pieces = r.pieces()
    assert len(pieces) == 12 and all(p.startswith(" ") and len(p.split()) == 1 for p in pieces)
    assert r.finish_reason() == "length"
    assert r.usage() == {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    first = r.events[0][1]["choices"][0]
    if api == "chat":  # vLLM-style role-only first delta, carrying no content
        assert first["delta"] == {"role": "assistant", "content": ""}
        assert r.events[0][1]["object"] == "chat.completion.chunk"
    else:
        assert first["text"] == pieces[0]
    assert r.events[-1][1]["choices"] == []  # usage chunk last
    expected = text.complete(
        MODEL,
        "the quick brown fox jumps over the lazy dog",
        seed=7,
        temperature=1.0,
        max_tokens=12,
        ignore_eos=True,
    )
    assert r.text() == expected.text()


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_non_streaming_and_determinism(api: str) -> None:
    async def go(session: aiohttp.ClientSession, url: str) -> list[Reply]:
        out = []
        for seed in (1, 1, 2):
            path, body = completion_body(api, PROMPT, max_tokens=20, ignore_eos=True, seed=seed)
            out.append(await call(session, url, path, body))
        return out

    a, b, c = with_twin(fixed(), go)
    assert a.status == b.status == c.status == 200
    assert len(a.text().split()) == 20 and a.finish_reason() == "length"
    assert a.usage() == {"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29}
    assert a.text() == b.text() and a.text() != c.text()
    assert a.body is not None and a.body["object"] == (
        "text_completion" if api == "completions" else "chat.completion"
    )


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_logprobs_follow_the_zipf_model(api: str) -> None:
    ask = {"logprobs": 3} if api == "completions" else {"logprobs": True, "top_logprobs": 3}
    path, body = completion_body(api, PROMPT, max_tokens=6, temperature=0, ignore_eos=True, **ask)

    async def fn(session: aiohttp.ClientSession, url: str) -> tuple[Reply, Reply, Reply]:
        streamed = await call(session, url, path, {**body, "stream": True})
        whole = await call(session, url, path, body)
        plain = await call(session, url, *completion_body(api, PROMPT, max_tokens=2))
        return streamed, whole, plain

    streamed, whole, plain = with_twin(fixed(tokens_per_chunk=2), fn)
    words = text.complete(MODEL, PROMPT, seed=0, temperature=0, max_tokens=6, ignore_eos=True).words
    h = sum(1 / (r + 1) for r in range(text.VOCAB_SIZE))  # the Zipf law's normaliser
    ranking = text._word_map(MODEL)
    top3 = [" " + w for w in ranking[:3]]

    def per_token(reply: Reply) -> list[tuple[str, float, dict[str, float]]]:
        fields = [c["logprobs"] for _, e in reply.events for c in e["choices"] if c["logprobs"]]
        if reply.body is not None:
            fields = [reply.body["choices"][0]["logprobs"]]
        out = []
        for f in fields:
            if api == "chat":
                for item in f["content"]:
                    alts = {t["token"]: t["logprob"] for t in item["top_logprobs"]}
                    out.append((item["token"], item["logprob"], alts))
            else:
                out.extend(zip(f["tokens"], f["token_logprobs"], f["top_logprobs"], strict=True))
        return out

    for reply in (streamed, whole):
        got = per_token(reply)
        assert [t for t, _, _ in got] == [" " + w for w in words]
        for t, lp, alts in got:
            assert list(alts)[:3] == top3  # the same three best tokens at every position
            best = [-math.log(r + 1) - math.log(h) for r in range(3)]
            assert list(alts.values())[:3] == pytest.approx(best, rel=1e-12)
            rank = ranking.index(t[1:])
            assert lp == pytest.approx(-math.log(rank + 1) - math.log(h), rel=1e-12)
            assert api == "chat" or alts[t] == lp  # completions also list the chosen token
    assert per_token(streamed) == per_token(whole)
    assert plain.body is not None and plain.body["choices"][0]["logprobs"] is None


def test_stop_without_ignore_eos_and_min_tokens() -> None:
    # seeds whose natural length is below 40, computed from the twin's own text model
    short = [
        s
        for s in range(60)
        if text.complete(MODEL, PROMPT, seed=s, temperature=1.0, max_tokens=40).finish_reason
        == "stop"
    ][:3]
    assert len(short) == 3

    async def go(session: aiohttp.ClientSession, url: str) -> list[tuple[Reply, Reply]]:
        out = []
        for s in short:
            path, body = completion_body("completions", PROMPT, max_tokens=40, seed=s, stream=True)
            free = await call(session, url, path, body)
            path, body = completion_body(
                "completions", PROMPT, max_tokens=40, seed=s, min_tokens=40, stream=True
            )
            out.append((free, await call(session, url, path, body)))
        return out

    for free, held in with_twin(fixed(), go):
        assert free.finish_reason() == "stop" and len(free.pieces()) < 40
        assert held.finish_reason() == "length" and len(held.pieces()) == 40


def test_errors_404_400_401_and_models() -> None:
    async def go(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with session.get(url + "/models") as resp:
            out["models"] = (resp.status, await resp.json(), resp.headers[SIMULATION_HEADER])
        out["no-key"] = await call(session, url, "/completions", {"model": MODEL, "prompt": "x"})
        auth = {"Authorization": "Bearer sekrit"}
        out["unknown"] = await call(
            session, url, "/completions", {"model": "nope", "prompt": "x"}, auth
        )
        out["badjson"] = await call(session, url, "/completions", b"{not json", auth)
        out["min>max"] = await call(
            session,
            url,
            "/completions",
            {"model": MODEL, "prompt": "x", "max_tokens": 2, "min_tokens": 3},
            auth,
        )
        out["ok"] = await call(
            session, url, "/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2}, auth
        )
        return out

    out = with_twin(fixed(api_key="sekrit"), go)
    # /v1/models also needs the key
    status, _, header = out["models"]
    assert status == 401 and header == "simulation"
    assert out["no-key"].status == 401
    unknown = out["unknown"]
    assert unknown.status == 404
    assert unknown.body["error"]["code"] == "model_not_found"
    assert "nope" in unknown.body["error"]["message"]
    assert out["badjson"].status == 400
    assert out["badjson"].body["error"]["type"] == "invalid_request_error"
    assert out["min>max"].status == 400 and out["min>max"].body["error"]["param"] == "min_tokens"
    assert out["ok"].status == 200

    async def models(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
        async with session.get(url.removesuffix("/v1") + "/health") as resp:
            assert resp.status == 200
        async with session.get(url + "/models") as resp:
            return await resp.json()

    listing = with_twin(fixed(), models)
    (entry,) = listing["data"]
    assert entry["id"] == MODEL and entry["owned_by"] == OWNED_BY and entry["simulation"] is True


def test_tokens_per_chunk() -> None:
    cfg = TwinConfig(engine=FixedEngine(2, 1), model_name=MODEL, tokens_per_chunk=4)

    async def go(session: aiohttp.ClientSession, url: str) -> Reply:
        path, body = completion_body(
            "completions",
            PROMPT,
            max_tokens=10,
            ignore_eos=True,
            stream=True,
            stream_options={"include_usage": True},
        )
        return await call(session, url, path, body)

    r = with_twin(cfg, go)
    assert [len(p.split()) for p in r.pieces()] == [1, 4, 4, 1]
    assert r.usage()["completion_tokens"] == 10


def test_fixed_mode_timing_from_truth(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    cfg = fixed(ttft_ms=40.0, tpot_ms=10.0, truth_path=truth)

    async def go(session: aiohttp.ClientSession, url: str) -> list[Reply]:
        path, body = completion_body("chat", PROMPT, max_tokens=20, ignore_eos=True, stream=True)
        return list(
            await asyncio.gather(
                *(call(session, url, path, body, {"X-Request-Id": f"r{i}"}) for i in range(4))
            )
        )

    replies = with_twin(cfg, go)
    lines = read_truth(truth)
    assert len(lines) == 4 and {line["status"] for line in lines} == {200}
    for line in lines:
        assert line["tokens_generated"] == line["tokens_reported"] == 20
        ttft_ms = (line["first_sent_ns"] - line["arrival_ns"]) / 1e6
        # never early (how late depends on how busy the machine is: see the next test)
        assert ttft_ms >= 40.0
        for i, t_ns in enumerate(line["token_ns"]):
            assert t_ns - line["arrival_ns"] >= 40_000_000 + 10_000_000 * i, i
        assert line["token_ns"] == sorted(line["token_ns"])
        assert line["finish_reason"] == line["true_finish"] == "length"
    for r in replies:  # the client's own view: first content chunk no earlier than 40 ms
        content = [
            t for t, e in r.events if e["choices"] and e["choices"][0]["delta"].get("content")
        ]
        assert (content[0] - r.sent_ns) / 1e6 >= 40.0
    # the truth names each request by the client's X-Request-Id and digests the text it sent
    by_id = {line["client_request_id"]: line for line in lines}
    assert sorted(by_id) == ["r0", "r1", "r2", "r3"]
    for r in replies:
        digest = hashlib.sha256(r.text().encode()).hexdigest()
        assert digest in {line["output_sha256"] for line in lines}


def test_fixed_engine_deadlines_are_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Token i is due at arrival + TTFT + i x TPOT whatever happened before: a wake-up late by
    less than half a TPOT (here 4 ms at every step of 10 ms, from a fake clock) never shifts the
    later deadlines (no drift; later, the host is taken to have fallen behind: see the test
    below). Ground truth from the engine's own schedule, so a busy machine cannot change it."""
    from inferaudit.twin import engine as engine_module

    clock = {"now": 1_000_000_000}
    asked: list[int] = []

    async def late_sleep(deadline_ns: int) -> None:
        asked.append(deadline_ns)
        clock["now"] = max(clock["now"], deadline_ns) + 4_000_000

    monkeypatch.setattr(engine_module, "sleep_until", late_sleep)
    monkeypatch.setattr(engine_module.time, "perf_counter_ns", lambda: clock["now"])
    job = Job(prompt_tokens=10, output_tokens=5, arrival_ns=1_000_000_000)

    async def run() -> list[int]:
        return [t async for t in FixedEngine(ttft_ms=40.0, tpot_ms=10.0).generate(job)]

    produced = asyncio.run(run())
    due = [1_000_000_000 + 40_000_000 + 10_000_000 * i for i in range(5)]
    assert asked == due
    assert produced == [t + 4_000_000 for t in due]  # each one late by its own wake-up only


# --- engine mode --------------------------------------------------------------------------


def _engine(truth: Path, **kw: Any) -> TwinConfig:
    options = {"efficiency": 0.5} | kw
    engine = EngineConfig.from_catalog("L20", "llama-3.1-8b", **options)
    return TwinConfig(engine=engine, model_name=MODEL, truth_path=truth)


async def _burst(
    session: aiohttp.ClientSession, url: str, n: int, prompt: str, max_tokens: int
) -> None:
    path, body = completion_body(
        "completions", prompt, max_tokens=max_tokens, ignore_eos=True, stream=True
    )
    replies = await asyncio.gather(*(call(session, url, path, body) for _ in range(n)))
    assert all(r.status == 200 and len(r.pieces()) == max_tokens for r in replies)


def test_engine_decode_matches_roofline_and_throughput_scales(tmp_path: Path) -> None:
    acc, model = catalog.accelerator("L20"), catalog.model("llama-3.1-8b")
    prompt = " ".join(["word"] * 100)
    results = {}
    for conc in (1, 8):
        truth = tmp_path / f"c{conc}.jsonl"
        with_twin(_engine(truth), lambda s, u, c=conc: _burst(s, u, c, prompt, max_tokens=24))
        lines = read_truth(truth)
        gaps = [
            (line["token_ns"][-1] - line["token_ns"][1]) / 1e9 / 22 for line in lines
        ]  # decode steps only (token 1 comes from prefill)
        first = min(line["arrival_ns"] for line in lines)
        last = max(line["token_ns"][-1] for line in lines)
        gap = sorted(gaps)[len(gaps) // 2]  # median request: the first may share a prefill step
        results[conc] = (
            gap,
            sum(len(line["token_ns"]) for line in lines) / ((last - first) / 1e9),
        )
        context = 100 + 12  # mean context over the decode phase
        expected = (
            roofline.decode_step_seconds(
                acc, model, batch=conc, context_tokens=context, dtype="bf16"
            )
            / 0.5
        )
        # each decode step lasts the roofline step / efficiency (timer slack: +20%)
        assert expected * 0.97 <= gap <= expected * 1.2, (conc, gap, expected)
    # memory-bound decode: 8 sequences cost about one step each, so throughput ~ 8x
    assert results[8][1] > 5.0 * results[1][1]


def test_engine_ttft_prefill_and_queueing(tmp_path: Path) -> None:
    acc, model = catalog.accelerator("L20"), catalog.model("llama-3.1-8b")
    prompt = " ".join(["word"] * 2000)
    prefill = roofline.prefill_seconds(acc, model, tokens=2000, dtype="bf16") / 0.5
    truth = tmp_path / "t.jsonl"
    with_twin(_engine(truth), lambda s, u: _burst(s, u, 1, prompt, max_tokens=4))
    (line,) = read_truth(truth)
    ttft = (line["first_token_ns"] - line["arrival_ns"]) / 1e9
    assert ttft >= prefill * 0.98  # compute-bound prefill, never shorter than the model's
    if line["engine_late_steps"] == 0:  # the twin kept its schedule: then no longer, either
        assert ttft <= prefill * 1.15 + 0.01
    # batch limit 2 and 6 requests at once: the third pair waits for two full services
    truth = tmp_path / "q.jsonl"
    with_twin(
        _engine(truth, max_batch=2),
        lambda s, u: _burst(s, u, 6, " ".join(["w"] * 50), max_tokens=8),
    )
    lines = sorted(read_truth(truth), key=lambda ln: ln["first_token_ns"])
    ttfts = [(ln["first_token_ns"] - ln["arrival_ns"]) / 1e9 for ln in lines]
    service = (lines[0]["token_ns"][-1] - lines[0]["arrival_ns"]) / 1e9
    assert ttfts[5] > 2 * service * 0.9 and ttfts[1] < service
    assert {ln["replica"] for ln in lines} == {0}


def test_engine_config_errors() -> None:
    with pytest.raises(ConfigError, match="does not fit"):
        EngineConfig.from_catalog("L20", "llama-3.1-70b")
    with pytest.raises(ConfigError, match="bf16_tflops"):  # unknown peak is never guessed
        EngineConfig.from_catalog("Ascend-910C", "llama-3.1-8b")
    with pytest.raises(ConfigError, match="efficiency"):
        EngineConfig.from_catalog("H100", "llama-3.1-8b", efficiency=0.0)
    cfg = EngineConfig.from_catalog("H100-SXM", "llama-3.1-8b", replicas=2)
    expected = 80e9 * 0.9 - 8.03e9 * 2
    assert cfg.kv_capacity_bytes() == pytest.approx(expected)


# --- behaviours parsing and the launcher ---------------------------------------------------


def test_parse_behaviours() -> None:
    b = parse_behaviours(["early-stop:fraction=0.5,lie=true", "usage-inflate", "burst:every=0"])
    assert b.early_stop is not None and b.early_stop.fraction == 0.5 and b.early_stop.lie
    assert b.usage_inflate is not None and b.usage_inflate.ratio == 0.25
    assert b.names() == ["early-stop", "usage-inflate", "burst"]
    assert parse_behaviours([]) == Behaviours()
    for bad, msg in [
        ("teleport", "unknown behaviour"),
        ("early-stop:fraction=1.5", "fraction"),
        ("early-stop:speed=2", "bad parameter"),
        ("burst:every=x", "not a int"),
        ("shed-under-load:mode=drop", "mode"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            parse_behaviours([bad])
    with pytest.raises(ConfigError, match="more than once"):
        parse_behaviours(["burst", "burst:every=4"])


def test_start_twin_serves_and_stops(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    options = TwinOptions(ttft_ms=5, tpot_ms=1, served_model_name=MODEL, truth=truth, port=1)
    with start_twin(options) as twin:
        assert twin.base_url == f"http://127.0.0.1:{twin.port}/v1"
        assert twin.port != 1  # always a free port on 127.0.0.1
        assert twin.description == {"mode": "fixed", "ttft_ms": 5.0, "tpot_ms": 1.0,
                                    "tokens_per_chunk": 1, "max_model_len": 8192}  # fmt: skip

        async def go() -> Reply:
            async with aiohttp.ClientSession() as session:
                path, body = completion_body("chat", PROMPT, max_tokens=3, ignore_eos=True)
                return await call(session, twin.base_url, path, body)

        reply = asyncio.run(go())
        assert reply.status == 200 and len(reply.text().split()) == 3
    assert twin.process.returncode == 0  # SIGTERM is a clean shutdown
    assert read_truth(truth)[0]["tokens_generated"] == 3


def test_start_twin_refuses_bad_options_before_starting() -> None:
    with pytest.raises(ConfigError, match=r"^--behave 'teleport': unknown behaviour \(known: "):
        start_twin(TwinOptions(behave=("teleport",)))
    with pytest.raises(ConfigError, match="--accelerator needs --model"):
        start_twin(TwinOptions(accelerator="H100-SXM"))


def test_start_twin_reports_why_the_child_could_not_start(tmp_path: Path) -> None:
    """A failure only the child can see (its truth file) comes back as its own one line, through
    the readiness pipe, not from parsed output."""
    truth = tmp_path / "no-such-dir" / "truth.jsonl"
    with pytest.raises(ConfigError) as caught:
        start_twin(TwinOptions(truth=truth))
    assert str(caught.value) == f"twin could not start: --truth {truth}: cannot open (No such " \
        "file or directory)"  # fmt: skip


def test_twin_child_takes_its_options_on_stdin_and_its_api_key_off_argv() -> None:
    """``python -m inferaudit.twin`` reads TwinOptions JSON on stdin (nothing on argv but the
    pipe's number) and refuses anything else with its usage line."""
    done = subprocess.run(
        [sys.executable, "-m", "inferaudit.twin"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == "usage: python -m inferaudit.twin --ready-fd N < options.json\n"


def test_start_twin_requires_its_api_key(tmp_path: Path) -> None:
    with start_twin(TwinOptions(ttft_ms=1, tpot_ms=1, api_key="k-123", model=MODEL)) as twin:
        assert "k-123" not in " ".join(str(a) for a in twin.process.args)

        async def go() -> tuple[int, int]:
            async with aiohttp.ClientSession() as session:
                path, body = completion_body("completions", PROMPT, max_tokens=2)
                denied = await call(session, twin.base_url, path, body)
                allowed = await call(
                    session, twin.base_url, path, body, {"Authorization": "Bearer k-123"}
                )
                return denied.status, allowed.status

        assert asyncio.run(go()) == (401, 200)


def test_client_disconnect_and_port_in_use(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    engine = EngineConfig.from_catalog("H100-SXM", "llama-3.1-8b")
    config = TwinConfig(engine=engine, model_name=MODEL, truth_path=truth)

    async def main() -> None:
        async with TwinServer(config) as server, aiohttp.ClientSession() as session:
            path, body = completion_body(
                "completions", PROMPT, max_tokens=2000, ignore_eos=True, stream=True
            )
            async with session.post(server.base_url + path, data=orjson.dumps(body)) as resp:
                for _ in range(3):
                    await resp.content.readline()
                resp.close()  # hang up mid-stream
            for _ in range(200):  # the twin notices at its next write
                await asyncio.sleep(0.02)
                if truth.exists() and truth.read_bytes():
                    break
            assert isinstance(server.twin.engine, BatchEngine)
            (replica,) = server.twin.engine.replicas
            await asyncio.sleep(0.05)
            assert replica.running == [] and replica.kv_used == 0  # the sequence was freed
            other = TwinConfig(engine=FixedEngine(1, 1), model_name=MODEL, port=server.port)
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{server.port}"):
                await TwinServer(other).start()

    asyncio.run(main())
    (line,) = read_truth(truth)
    assert line["true_finish"] == "client-closed" and 0 < line["tokens_generated"] < 2000


def test_fixed_engine_does_not_catch_up_in_a_burst_after_a_stall() -> None:
    # The twin's process stalls 30 ms (a blocking sleep in its loop) after its 3rd token, at a
    # 2 ms TPOT: a real engine that was not scheduled goes on from then, one token a step; it
    # never writes the tokens it "owed" at once. Each token follows the one before it by at
    # least half a TPOT, however late the host is.
    engine = FixedEngine(ttft_ms=1, tpot_ms=2)

    async def produce() -> list[int]:
        out = []
        job = Job(prompt_tokens=4, output_tokens=12, arrival_ns=time.perf_counter_ns())
        async for t in engine.generate(job):
            out.append(t)
            if len(out) == 3:
                time.sleep(0.03)
        return out

    times = asyncio.run(produce())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 12
    assert min(gaps) >= 1_000_000, gaps  # half a 2 ms TPOT
    assert gaps[2] >= 30_000_000  # the stall itself shows as one long gap
