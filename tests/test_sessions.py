"""Multi-turn sessions in the load engine, against a real twin process on 127.0.0.1.

A small fake planner (picklable, duck-typed as ``load.plans.SessionSource``) plans chat
conversations whose turn ``t`` carries the real answers of turns ``0 .. t-1``; the twin's truth
file shows what it received (its prompt token count is the words of every message).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from inferaudit.measure.load.runner import run_load
from inferaudit.measure.protocol import (
    Api,
    Arrivals,
    Endpoint,
    Length,
    Load,
    RunSpec,
    Sessions,
    Workload,
)
from inferaudit.measure.records import Record, read_records
from inferaudit.measure.workload import RequestPlan
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions

MODEL = "twin-model"
SHIFT = 40  # the planner's TURN_SHIFT: turn t of the session at position i has id i + (t << 40)
USER_WORDS = 6
THINK_S = 0.03


def user_text(position: int, turn: int) -> str:
    return f"session {position} turn {turn} please answer"  # USER_WORDS words


class FakeSessions:
    """``turns`` turns per position; ``fail`` = (position, turn) planned so the twin refuses it
    (``n: 2`` is a 400 there)."""

    def __init__(self, turns: int, fail: tuple[int, int] | None = None) -> None:
        self.n = turns
        self.fail = fail

    def plan(self, i: int) -> RequestPlan:
        return self._plan(i, 0, ())

    def turns(self, position: int) -> int:
        return self.n

    def turn_plan(self, position: int, turn: int, answers: Sequence[str]) -> RequestPlan:
        assert len(answers) == turn
        return self._plan(position, turn, answers)

    def _plan(self, position: int, turn: int, answers: Sequence[str]) -> RequestPlan:
        history: list[tuple[str, str]] = []
        for k, answer in enumerate(answers):
            history += [("user", user_text(position, k)), ("assistant", answer)]
        history.append(("user", user_text(position, turn)))
        extra = {"n": 2} if self.fail == (position, turn) else {}
        return RequestPlan(
            position + (turn << SHIFT), "measure", "\n".join(t for _, t in history), 4,
            extra_body=extra, messages=tuple(history), session=position, turn=turn,
        )  # fmt: skip


def _spec(base_url: str, load: Load, workers: int = 2, **wl: Any) -> RunSpec:
    workload = Workload(
        output_tokens=Length(lo=4, hi=4),
        dataset="conversations.jsonl",  # never read: the test's planner plans the sessions
        sessions=Sessions(think_time_s=THINK_S),
        max_text_bytes=wl.pop("max_text_bytes", None),
        **wl,
    )
    return RunSpec(
        endpoint=Endpoint(base_url=base_url, model=MODEL, api=Api.chat),
        load=load,
        workers=workers,
        workload=workload,
        seed=1,
    )


def _truth(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _by_turn(records: list[Record]) -> dict[tuple[int, int], Record]:
    out: dict[tuple[int, int], Record] = {}
    for r in records:
        assert r.session is not None and r.turn is not None
        assert (r.session, r.turn) not in out
        out[(r.session, r.turn)] = r
    return out


def _check_chain(turns: dict[tuple[int, int], Record], truth: list[dict[str, Any]]) -> None:
    """Each later turn is due think time after the previous answer's last byte, and the twin
    received every earlier answer (its prompt grew by exactly the words of each)."""
    think_ns = round(THINK_S * 1e9)
    by_output = {ln["output_sha256"]: ln for ln in truth}
    for (session, turn), rec in turns.items():
        assert rec.id == session + (turn << SHIFT)
        line = by_output[rec.output_sha256]
        answers = [turns[(session, k)].output_text or "" for k in range(turn)]
        words = USER_WORDS * (turn + 1) + sum(len(a.split()) for a in answers)
        assert line["prompt_tokens"] == words, (session, turn)
        if turn:
            prev = turns[(session, turn - 1)]
            assert prev.done_ns is not None
            assert rec.scheduled_ns == prev.done_ns + think_ns
            assert rec.sent_ns is not None and rec.sent_ns >= rec.scheduled_ns


def test_open_loop_sessions_carry_the_real_answers(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    options = TwinOptions(ttft_ms=5, tpot_ms=2, served_model_name=MODEL, truth=truth)
    with start_twin(options) as tw:
        spec = _spec(tw.base_url, Load(rate=40, requests=3, arrivals=Arrivals.constant))
        result = run_load(spec, tmp_path / "r.jsonl", planner=FakeSessions(3))
    records = read_records(tmp_path / "r.jsonl")
    turns = _by_turn(records)
    assert sorted(turns) == [(s, t) for s in range(3) for t in range(3)]  # one record each
    assert all(r.ok for r in records)
    assert all(r.worker == s % 2 for (s, _), r in turns.items())  # a session stays in its worker
    assert [turns[(s, 0)].scheduled_ns for s in range(3)] == [0, 25_000_000, 50_000_000]
    lines = _truth(truth)
    assert len(lines) == 9
    _check_chain(turns, lines)
    assert (result.planned, result.sent, result.turns_sent) == (3, 9, 6)
    assert result.sessions_ended_early == 0
    assert result.to_json()["turns_sent"] == 6


def test_a_failed_turn_ends_its_session(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    options = TwinOptions(ttft_ms=5, tpot_ms=2, served_model_name=MODEL, truth=truth)
    with start_twin(options) as tw:
        spec = _spec(tw.base_url, Load(rate=40, requests=3, arrivals=Arrivals.constant))
        result = run_load(spec, tmp_path / "r.jsonl", planner=FakeSessions(3, fail=(1, 1)))
    turns = _by_turn(read_records(tmp_path / "r.jsonl"))
    assert sorted(turns) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    assert turns[(1, 1)].error_class == "http_400"
    assert all(r.ok for key, r in turns.items() if key != (1, 1))
    assert (result.sent, result.turns_sent, result.sessions_ended_early) == (8, 5, 1)
    assert sum(w.sessions_ended_early for w in result.workers) == 1
    _check_chain({k: r for k, r in turns.items() if r.ok}, _truth(truth))


def test_closed_loop_slot_holds_a_whole_session(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    options = TwinOptions(ttft_ms=5, tpot_ms=2, served_model_name=MODEL, truth=truth)
    with start_twin(options) as tw:
        spec = _spec(tw.base_url, Load(concurrency=1, requests=2), workers=1)
        result = run_load(spec, tmp_path / "r.jsonl", planner=FakeSessions(3))
    records = sorted(read_records(tmp_path / "r.jsonl"), key=lambda r: r.scheduled_ns)
    assert [(r.session, r.turn) for r in records] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
        (1, 2),
    ]
    for prev, nxt in itertools.pairwise(records):  # one request at a time, in session order
        assert prev.done_ns is not None and nxt.scheduled_ns >= prev.done_ns
    _check_chain(_by_turn(records), _truth(truth))
    assert (result.planned, result.sent, result.turns_sent, result.sessions_ended_early) == (
        2, 6, 4, 0,
    )  # fmt: skip


def test_no_turn_is_sent_after_the_window(tmp_path: Path) -> None:
    # 1 s of think time in a 0.3 s window: only first turns are sent, each session ends early
    with start_twin(TwinOptions(ttft_ms=5, tpot_ms=2, served_model_name=MODEL)) as tw:
        spec = _spec(
            tw.base_url, Load(rate=10, duration_s=0.3, arrivals=Arrivals.constant), workers=1
        )
        spec = spec.model_copy(
            update={
                "workload": spec.workload.model_copy(
                    update={"sessions": Sessions(think_time_s=1.0)}
                )
            }
        )
        result = run_load(spec, tmp_path / "r.jsonl", planner=FakeSessions(3))
    records = read_records(tmp_path / "r.jsonl")
    assert [(r.session, r.turn) for r in records] == [(0, 0), (1, 0), (2, 0)]
    assert (result.planned, result.turns_sent, result.sessions_ended_early) == (3, 0, 3)


@pytest.mark.parametrize(
    ("field", "value"), [("keep_output_text", False), ("max_text_bytes", 65_536)]
)
def test_sessions_must_keep_their_answers_whole(field: str, value: object) -> None:
    # the next turn carries each answer whole: the protocol refuses records that cut it
    kw: dict[str, Any] = {field: value}
    with pytest.raises(ValidationError, match="records keep the whole text"):
        Workload(dataset="d.json", sessions=Sessions(), **kw)
    assert Workload(dataset="d.json", sessions=Sessions()).max_text_bytes is None
