"""The streaming client against fake servers: records, error classes, preflight."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from fakes import Behaviour, FakeServer, closed_port
from inferaudit.errors import ConfigError, EndpointError
from inferaudit.measure.load.client import api_key_for, asked_tokens, check_endpoint, send_plans
from inferaudit.measure.load.sse import MAX_EVENT_BYTES
from inferaudit.measure.load.stream import ContentCap
from inferaudit.measure.protocol import Endpoint, Workload
from inferaudit.measure.records import Record
from inferaudit.measure.workload import RequestPlan

MODEL = "fake-model"


def plan(i: int = 0, max_tokens: int | None = 4, **kw: Any) -> RequestPlan:
    return RequestPlan(
        i, kw.pop("phase", "measure"), kw.pop("prompt", "hello there"), max_tokens, 2, **kw
    )


def send(
    base_url: str,
    plans: list[RequestPlan] | None = None,
    api: str = "completions",
    **kw: Any,
) -> list[Record]:
    endpoint = Endpoint(base_url=base_url, model=MODEL, api=api)
    return asyncio.run(send_plans(endpoint, plans or [plan()], **kw))


def one(behaviour: Behaviour, api: str = "completions", **kw: Any) -> Record:
    with FakeServer(behaviour) as srv:
        return send(srv.base_url, api=api, **kw)[0]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_normal_stream_record(api: str) -> None:
    with FakeServer() as srv:
        rec = send(srv.base_url, [plan(7, tag="t1")], api=api, api_key="sk-secret")[0]
        body = srv.seen.bodies[0]
        headers = srv.seen.headers[-1]
    assert isinstance(rec, Record)
    assert rec.error_class is None and rec.error_message is None
    assert rec.id == 7 and rec.tag == "t1" and rec.phase == "measure"
    assert rec.status == 200
    assert rec.output_text == " w0 w1 w2 w3"
    assert rec.content_chunks == 4 and rec.chunk_chars == [3, 3, 3, 3]
    assert rec.output_chars == 12
    assert rec.empty_chunks_before_content == 0
    assert rec.finish_reason == "length" and rec.model == MODEL
    assert (rec.usage_prompt_tokens, rec.usage_completion_tokens) == (7, 4)
    assert rec.prompt_sha256 == hashlib.sha256(b"hello there").hexdigest()
    assert rec.output_sha256 == hashlib.sha256(b" w0 w1 w2 w3").hexdigest()
    assert (rec.input_tokens, rec.max_tokens) == (2, 4)
    t = rec
    assert t.scheduled_ns <= t.sent_ns <= t.first_chunk_ns <= t.first_content_ns
    assert t.chunk_ns == sorted(t.chunk_ns) and t.chunk_ns[0] == t.first_content_ns
    assert t.chunk_ns[-1] <= t.done_ns
    # the body asks for streaming with usage and enforces the output length
    expected = {
        "model": MODEL,
        "max_tokens": 4,
        "ignore_eos": True,
        "min_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if api == "chat":
        expected["messages"] = [{"role": "user", "content": "hello there"}]
    else:
        expected["prompt"] = "hello there"
    assert body == expected
    assert headers["authorization"] == "Bearer sk-secret"
    assert "sk-secret" not in repr(rec)


def test_no_key_no_authorization_header_and_extra_body_last() -> None:
    with FakeServer() as srv:
        p = plan(extra_body={"temperature": 0.0, "seed": 3, "max_tokens": 2})
        rec = send(srv.base_url, [p])[0]
        assert "authorization" not in srv.seen.headers[-1]
        body = srv.seen.bodies[0]
    assert (body["temperature"], body["seed"], body["max_tokens"]) == (0.0, 3, 2)
    assert rec.content_chunks == 2


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("per_chunk", [1, 2])
def test_top_logprobs_are_kept_per_token(api: str, per_chunk: int) -> None:
    with FakeServer(Behaviour(tokens_per_chunk=per_chunk)) as srv:
        asked, plain = send(
            srv.base_url, [plan(0, 3, extra_body={"logprobs": 2}), plan(1, 3)], api=api
        )
    assert asked.top_logprobs == [
        {" w0": -0.0, " v0": -0.2},
        {" w1": -0.1, " v1": pytest.approx(-0.3)},
        {" w2": -0.2, " v2": pytest.approx(-0.4)},
    ]
    assert plain.top_logprobs is None  # not asked, not kept


def test_output_length_not_enforced_and_no_max_tokens() -> None:
    with FakeServer(Behaviour(tokens=3)) as srv:
        workload = Workload(enforce_output_length=False, keep_output_text=False)
        recs = send(srv.base_url, [plan(0, 5), plan(1, None)], workload=workload)
        first, second = srv.seen.bodies
    assert "ignore_eos" not in first and "min_tokens" not in first and first["max_tokens"] == 5
    assert "max_tokens" not in second
    assert recs[0].output_text is None and recs[0].output_chars == 15
    assert recs[1].content_chunks == 3


def test_chat_role_only_first_delta_is_not_content() -> None:
    rec = one(Behaviour(role_first=True), api="chat")
    assert rec.empty_chunks_before_content == 1
    assert rec.content_chunks == 4 and rec.output_text == " w0 w1 w2 w3"
    assert rec.first_chunk_ns <= rec.first_content_ns


def test_multi_token_chunks_are_one_event_each() -> None:
    rec = one(Behaviour(tokens_per_chunk=3), plans=[plan(max_tokens=7)])
    assert rec.content_chunks == 3
    assert rec.chunk_chars == [9, 9, 3]
    assert rec.output_text == " w0 w1 w2 w3 w4 w5 w6"
    assert rec.usage_completion_tokens == 7


def test_byte_by_byte_crlf_stream_with_comments() -> None:
    rec = one(Behaviour(split=1, crlf=True, comments=True), api="chat")
    assert rec.error_class is None
    assert rec.output_text == " w0 w1 w2 w3" and rec.content_chunks == 4


def test_utf8_split_between_reads_counts_characters_not_bytes() -> None:
    rec = one(Behaviour(split=1, word="é€😀", tokens_per_chunk=2), plans=[plan(max_tokens=3)])
    assert rec.error_class is None
    assert rec.output_text == " é€😀0 é€😀1 é€😀2"
    assert rec.chunk_chars == [10, 5]  # characters, though each "é€😀" is 9 bytes
    assert rec.output_chars == 15


def test_slow_stream_chunks_are_stamped_as_they_arrive() -> None:
    rec = one(Behaviour(delay_s=0.05))  # the server waits 50 ms before each of 4 events
    stamps = rec.chunk_ns
    assert stamps == sorted(stamps) and len(set(stamps)) >= 3  # separate reads, separate times
    assert stamps[-1] - stamps[0] >= 100_000_000  # 150 ms of server waits, less a late start


@pytest.mark.parametrize(
    ("behaviour", "error_class", "message"),
    [
        (Behaviour(status=500), "http_500", "fake error 500 for request 1"),
        (Behaviour(status=429), "http_429", "fake error 429 for request 1"),
        (Behaviour(api_key="right"), "http_401", "Incorrect API key provided"),
        (Behaviour(malformed_at=1), "sse_malformed", 'bad event: {"choices": [{"text": "oops"'),
        (Behaviour(drop_after=2), "stream_truncated", None),
        (Behaviour(no_done=True), "stream_truncated", "stream ended without [DONE] or a"),
        (Behaviour(stream_error=True), "stream_error", "engine overloaded"),
        (Behaviour(tokens=0, honour_max_tokens=False), "empty_output", "the stream finished"),
    ],
)
def test_error_classes(behaviour: Behaviour, error_class: str, message: str | None) -> None:
    rec = one(behaviour)
    assert rec.error_class == error_class
    if message is not None:
        assert rec.error_message.startswith(message)
    assert rec.done_ns >= rec.sent_ns


def test_dropped_connection_keeps_the_chunks_before_the_drop() -> None:
    rec = one(Behaviour(drop_after=2))
    assert rec.status == 200
    assert rec.content_chunks == 2 and rec.output_text == " w0 w1"


def test_every_third_request_429() -> None:
    with FakeServer(Behaviour(error_every=3)) as srv:
        recs = send(srv.base_url, [plan(i) for i in range(7)])
    assert [r.error_class for r in recs] == [
        None,
        None,
        "http_429",
        None,
        None,
        "http_429",
        None,
    ]


def test_404_on_a_wrong_base_path() -> None:
    with FakeServer() as srv:
        rec = send(srv.base_url.replace("/v1", "/v2"))[0]
    assert (rec.error_class, rec.status, rec.error_message) == (
        "http_404",
        404,
        "Not Found",
    )


def test_connection_refused_is_connect() -> None:
    rec = send(f"http://127.0.0.1:{closed_port()}/v1")[0]
    assert rec.error_class == "connect" and rec.status is None
    assert rec.sent_ns is not None and rec.content_chunks == 0


def test_timeout_from_the_scheduled_time() -> None:
    rec = one(Behaviour(delay_s=0.5), timeout_s=0.2)
    assert rec.error_class == "timeout"
    # cut at 0.2 s: never before it, and before the server's first byte (0.5 s)
    assert rec.done_ns - rec.scheduled_ns >= 200_000_000 and rec.content_chunks == 0


def test_concurrency_limit_of_send_plans() -> None:
    with FakeServer(Behaviour(delay_s=0.02)) as srv:
        send(srv.base_url, [plan(i) for i in range(6)], concurrency=2)
        assert srv.seen.max_in_flight == 2


def test_check_endpoint_returns_models() -> None:
    with FakeServer(Behaviour(models=("a", MODEL))) as srv:
        models = check_endpoint(Endpoint(base_url=srv.base_url, model=MODEL), None)
    assert [m["id"] for m in models["data"]] == ["a", MODEL]


def test_check_endpoint_unreachable() -> None:
    port = closed_port()
    with pytest.raises(EndpointError) as info:
        check_endpoint(Endpoint(base_url=f"http://127.0.0.1:{port}/v1", model=MODEL), None)
    assert str(info.value) == f"cannot reach http://127.0.0.1:{port}/v1/models: connection refused"


def test_check_endpoint_refused_credentials() -> None:
    with FakeServer(Behaviour(api_key="k")) as srv, pytest.raises(EndpointError) as info:
        check_endpoint(Endpoint(base_url=srv.base_url, model=MODEL), "wrong")
    assert str(info.value) == "endpoint refused credentials (HTTP 401): set --api-key-env"


def test_check_endpoint_model_not_served() -> None:
    with FakeServer(Behaviour(models=("a", "b"))) as srv, pytest.raises(EndpointError) as info:
        check_endpoint(Endpoint(base_url=srv.base_url, model="x"), None)
    assert str(info.value) == "model 'x' is not served here; /v1/models lists: a, b"


def test_api_key_for_reads_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = Endpoint(base_url="http://127.0.0.1:9/v1", model=MODEL, api_key_env="IA_TEST_KEY")
    monkeypatch.setenv("IA_TEST_KEY", "sk-1")
    assert api_key_for(endpoint) == "sk-1"
    monkeypatch.delenv("IA_TEST_KEY")
    with pytest.raises(ConfigError, match="--api-key-env IA_TEST_KEY: that environment variable"):
        api_key_for(endpoint)
    assert api_key_for(Endpoint(base_url="http://127.0.0.1:9/v1", model=MODEL)) is None


def test_malformed_event_keeps_the_content_before_it_aligned() -> None:
    rec = one(Behaviour(malformed_at=2))
    assert rec.error_class == "sse_malformed"
    assert rec.output_text == " w0 w1"
    assert rec.content_chunks == len(rec.chunk_ns) == len(rec.chunk_chars) == 2


@pytest.mark.parametrize(
    ("behaviour", "field", "message"),
    [
        (
            Behaviour(finish_reason=5),
            "finish_reason",
            "finish_reason: Input should be a valid string",
        ),
        (Behaviour(served_model=["m"]), "model", "model: Input should be a valid string"),
        (
            Behaviour(usage={"prompt_tokens": "7", "completion_tokens": 4.5}),
            "usage_completion_tokens",
            "usage_completion_tokens: Input should be a valid integer, got a number with a "
            "fractional part",
        ),
        (
            Behaviour(usage={"prompt_tokens": 2**64, "completion_tokens": 4}),
            "usage_prompt_tokens",
            "usage_prompt_tokens: Unable to parse input string as an integer, exceeded maximum "
            "size",
        ),
    ],
)
@pytest.mark.parametrize("api", ["completions", "chat"])
def test_a_server_value_the_record_cannot_hold_is_the_endpoints_malformed_event(
    behaviour: Behaviour, field: str, message: str, api: str
) -> None:
    """A finish_reason, model or usage count of the wrong type (or too big to write) fails
    the request as sse_malformed with the value dropped: it used to raise in the worker, which
    stopped the run as a client bug -- an endpoint could turn its FAIL into an invalid run."""
    rec = one(behaviour, api)
    assert rec.error_class == "sse_malformed"
    assert rec.error_message == f"bad event: {message}"
    assert getattr(rec, field) is None
    assert rec.output_text == " w0 w1 w2 w3"  # the content it did send is kept
    assert Record.model_validate_json(rec.to_line()) == rec  # and the line is writable


def test_usage_as_a_whole_number_float_is_still_a_count() -> None:
    rec = one(Behaviour(usage={"prompt_tokens": 7.0, "completion_tokens": 4}))
    assert rec.ok and rec.usage_prompt_tokens == 7 and rec.finish_reason == "length"


def test_check_endpoint_other_status_is_one_line() -> None:
    with FakeServer() as srv, pytest.raises(EndpointError) as info:
        check_endpoint(Endpoint(base_url=srv.base_url.replace("/v1", "/v2"), model=MODEL), None)
    assert str(info.value) == f"GET {srv.base_url[:-3]}/v2/models answered HTTP 404: Not Found"


def test_first_byte_timeout_is_the_endpoints_failure() -> None:
    # headers at once, then no body byte: a first-byte timeout long before the total timeout
    from inferaudit.measure.load.deadline import Timeouts

    limit = 0.3
    rec = one(Behaviour(first_delay_s=30.0), timeouts=Timeouts(600.0, limit, 30.0))
    assert rec.error_class == "first_byte_timeout" and rec.status == 200
    assert rec.error_message == "no response byte within 0.3 s of the send"
    assert rec.content_chunks == 0 and rec.first_chunk_ns is None
    assert rec.done_ns is not None and rec.sent_ns is not None
    assert 1.0 <= (rec.done_ns - rec.sent_ns) / (limit * 1e9) < 10.0


def test_stall_after_some_chunks_keeps_them() -> None:
    from inferaudit.measure.load.deadline import Timeouts

    rec = one(Behaviour(stall_after=2), timeouts=Timeouts(600.0, 60.0, 0.3))
    assert (rec.error_class, rec.content_chunks, rec.output_text) == ("stall_timeout", 2, " w0 w1")
    assert rec.done_ns is not None
    assert 1.0 <= (rec.done_ns - rec.chunk_ns[-1]) / 0.3e9 < 10.0


def test_text_is_cut_at_a_character_boundary_and_digested_whole() -> None:
    # " é€😀0 é€😀1 é€😀2": each word is 11 UTF-8 bytes; keep at most 16 bytes of it
    with FakeServer(Behaviour(word="é€😀", tokens_per_chunk=3)) as srv:
        workload = Workload(max_text_bytes=16)
        rec = send(srv.base_url, [plan(max_tokens=3)], workload=workload)[0]
    full = " é€😀0 é€😀1 é€😀2"
    assert rec.output_chars == len(full) == 15
    assert rec.output_sha256 == hashlib.sha256(full.encode()).hexdigest()
    assert rec.output_text == " é€😀0 é"  # 11 + 3 bytes; the next character (€) would make 17
    assert not rec.text_complete


def test_an_event_past_the_size_limit_is_malformed() -> None:
    """Events a little under MAX_EVENT_BYTES are read; one over it (JSON around a content of
    that many characters) fails the request as the endpoint's malformed event."""
    unbounded = [plan(max_tokens=None)]  # the content cap is 64 Mi characters then
    fits = one(Behaviour(big_chunks=2, chunk_bytes=MAX_EVENT_BYTES - 200), plans=unbounded)
    assert fits.ok and fits.output_chars == 2 * (MAX_EVENT_BYTES - 200)
    rec = one(Behaviour(big_chunks=2, chunk_bytes=MAX_EVENT_BYTES), plans=unbounded)
    assert rec.error_class == "sse_malformed"
    assert rec.error_message == "bad event: an event of more than 1,048,576 bytes"
    assert rec.content_chunks == 0


def test_a_stream_far_longer_than_max_tokens_is_cut_off_as_overlong() -> None:
    """A server that ignores max_tokens and streams on would fill the client's memory: past
    ContentCap (2 x max_tokens + 64 events, or max_tokens x 256 + 64 Ki characters, or a body
    of 4 bytes a character and 8 KiB an event: a keep-alive flood) the request is cut off as
    the endpoint's failure, with what it had sent."""
    cap = ContentCap.of(4)
    assert (cap.events, cap.chars) == (72, 4 * 256 + 65536)
    rec = one(Behaviour(tokens=500, honour_max_tokens=False))
    assert rec.error_class == "overlong"
    assert rec.content_chunks > 72 and rec.content_chunks < 500
    assert rec.error_message == (
        f"more than 72 content events or 66,560 characters ({rec.content_chunks} events, "
        f"{rec.output_chars:,} characters so far)"
    )
    chars = one(Behaviour(big_chunks=3, chunk_bytes=600_000))
    assert chars.error_class == "overlong" and chars.output_chars >= 600_000
    assert chars.content_chunks < 3
    assert cap.body_bytes == 4 * 66_560 + 8192 * 72
    flood = one(Behaviour(keepalives=cap.body_bytes // 13 + 1))  # ": keep-alive\n" is 13 bytes
    assert flood.error_class == "overlong" and flood.content_chunks == 0
    assert flood.error_message == f"more than {cap.body_bytes:,} bytes of body"
    fine = one(Behaviour(keepalives=cap.body_bytes // 26))
    assert fine.ok and fine.content_chunks == 4
    honest = one(Behaviour(tokens=500, honour_max_tokens=False), plans=[plan(max_tokens=500)])
    assert honest.ok and honest.content_chunks == 500


def test_the_content_cap_follows_what_the_body_asks() -> None:
    """extra_body is merged last: a larger max_tokens there widens the cap (an honest long
    answer is never cut); a limit that is not a number, or none, gives the widest cap."""
    assert asked_tokens(plan(max_tokens=4)) == 4
    assert asked_tokens(plan(max_tokens=4, extra_body={"max_tokens": 900})) == 900
    assert asked_tokens(plan(max_tokens=4, extra_body={"max_completion_tokens": 50})) == 50
    assert asked_tokens(plan(max_tokens=4, extra_body={"max_tokens": None})) is None
    assert asked_tokens(plan(max_tokens=None)) is None
    assert ContentCap.of(None) == ContentCap(1 << 20, 64 << 20)
    wide = [plan(max_tokens=4, extra_body={"max_tokens": 500})]
    rec = one(Behaviour(tokens=500, honour_max_tokens=False), plans=wide)
    assert rec.ok and rec.content_chunks == 500
