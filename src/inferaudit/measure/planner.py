"""The planner: ``plan(i)``, the request at position ``i`` of a run, the same every time for the
same seed (the draws themselves are in :mod:`inferaudit.measure.workload`).

What a position holds, by the protocol's workload:

* **synthetic** (default): ``workload.synthetic_prompt`` of a drawn length; with
  ``workload.prefix``, the prompt starts with one of ``prefix.groups`` shared system prompts of
  ``prefix.tokens`` words (group ``g`` of request ``i``: 8 bytes of ``prf(seed, "prefix-group",
  i)`` mod G; the prompt of group ``g``: words from SHAKE-128(``prf(seed, "prefix", g)``)), then
  the request's own salted prompt of the drawn length. With ``exact_input_tokens`` (the run's
  tokenizer), the salted part is cut to the exact token count (``exact_length.exact_prompt``).
* **dataset**: conversations (``measure.datasets``: prompt JSONL, ShareGPT, OpenAI chat, a
  Hugging Face dataset on disk) in an order drawn from the seed (``perm[i % n]``). Without
  sessions a position is the conversation's first user turn (its system prompt included), as
  peers' single-turn benchmarks send it. With ``workload.sessions`` a position is a *session*:
  :meth:`Planner.turns` turns, turn ``t >= 1`` planned by :meth:`Planner.turn_plan` from the
  real answers to the turns before it; its id is :func:`turn_id` ``(i, t) = i + (t << 40)``.
  A turn's output length is the dataset's ``max_tokens`` where it has one, else a draw from
  ``workload.output_tokens`` keyed by the turn's id.
* **trace**: entry ``i`` of the trace (``measure.traces``): its prompt shares the blocks its
  ``hash_ids`` name with every other entry naming them; its output length is the entry's.

A conversation with a system prompt or several turns is sent as chat ``messages``
(``RequestPlan.messages``); its ``prompt`` is :func:`render_messages` of them, which a
completions endpoint receives and ``prompt_sha256`` hashes. A one-turn conversation without a
system prompt is a plain prompt, exactly as v0.1 planned dataset rows.

Callers may inject their own plans at given ids (``injected``) or compute them on demand
(``audit``, an :class:`AuditLookup`); an injected or audited position is one request (one turn).
Planners are picklable: the runner builds one in the parent (reading any dataset or trace once)
and ships it to the workers.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from inferaudit.errors import ConfigError
from inferaudit.measure.datasets import Conversation, load_conversations
from inferaudit.measure.exact_length import exact_prompt
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.tokenizer import Tokenizer
from inferaudit.measure.traces import TraceEntry, load_trace, trace_prompt
from inferaudit.measure.workload import (
    SALT_WORDS,
    VOCAB,
    RequestPlan,
    draw_length,
    planning_seed,
    prf,
    prf_rng,
    sampling_body,
    synthetic_prompt,
)

__all__ = ["TURN_SHIFT", "AuditLookup", "Planner", "render_messages", "turn_id"]

TURN_SHIFT = 40  # turn t of the session at position i has id i + (t << TURN_SHIFT)

Messages = tuple[tuple[str, str], ...]


def turn_id(position: int, turn: int) -> int:
    """The request id of turn ``turn`` of the session at ``position`` (turn 0: the position,
    whatever it is: probes and audit requests plan first turns at ids of their own)."""
    if turn == 0:
        return position
    assert 0 <= position < 1 << TURN_SHIFT, "a session with later turns starts below 2**40"
    return position + (turn << TURN_SHIFT)


def render_messages(messages: Messages) -> str:
    """The text form of a conversation: ``role: content`` blocks separated by blank lines, then
    ``assistant:`` (what a completions endpoint is asked to continue)."""
    return "\n\n".join([*(f"{role}: {text}" for role, text in messages), "assistant:"])


class AuditLookup(Protocol):
    """Audit plans computed on demand, one id at a time (a run whose length is not known in
    advance): ``at(i, planner)`` is the plan sent at id ``i`` instead of the workload's, or None.
    It may only use ``planner.generated`` (never ``plan``), and must be picklable."""

    def at(self, i: int, planner: Planner) -> RequestPlan | None: ...


class Planner:
    """``plan(i)``: the request at position ``i`` (see the module docstring).

    Positions ``0 .. warmup-1`` are phase ``"warmup"``, later ones ``"measure"`` (a session's
    turns share its phase). ``injected`` plans replace the generated ones at their ids (their own
    ``phase``/``tag`` are kept), then ``audit`` may replace any other.
    """

    def __init__(
        self,
        spec: RunSpec,
        *,
        injected: Mapping[int, RequestPlan] | None = None,
        conversations: Sequence[Conversation] | None = None,
        trace: Sequence[TraceEntry] | None = None,
        tokenizer: Tokenizer | None = None,
        audit: AuditLookup | None = None,
    ) -> None:
        self.workload = spec.workload
        self.sampling = spec.sampling
        self.warmup = spec.load.warmup
        self.injected = dict(injected or {})
        self.audit = audit
        for i, p in self.injected.items():
            if p.id != i:
                raise ConfigError(f"injected plan at id {i} carries id {p.id}")
        if self.workload.exact_input_tokens and tokenizer is None:
            raise ConfigError("exact input token counts need the run's tokenizer")
        self.tokenizer = tokenizer if self.workload.exact_input_tokens else None
        self._seed = planning_seed(spec)
        self._draws = any(
            length.dist != "fixed"
            for length in (spec.workload.input_tokens, spec.workload.output_tokens)
        )
        self._rows = tuple(conversations) if conversations is not None else None
        self._trace = tuple(trace) if trace is not None else None
        self._order: list[int] = []
        if self._rows is not None:
            rng = prf_rng(self._seed, b"dataset", 0)
            self._order = rng.permutation(len(self._rows)).tolist()
        sessions = self.workload.sessions
        self._max_turns = None if sessions is None else sessions.max_turns
        self._prefixes: tuple[str, ...] = ()
        if (prefix := self.workload.prefix) is not None:
            self._prefixes = tuple(
                self._words(b"prefix", g, prefix.tokens) for g in range(prefix.groups)
            )

    @classmethod
    def from_spec(
        cls,
        spec: RunSpec,
        *,
        injected: Mapping[int, RequestPlan] | None = None,
        audit: AuditLookup | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> Planner:
        """A planner for ``spec``, reading its dataset or trace (if any) now."""
        wl = spec.workload
        conversations = None
        if wl.dataset is not None:
            conversations = load_conversations(
                Path(wl.dataset), wl.dataset_format, wl.dataset_sha256
            )
        entries = None
        if wl.trace is not None:
            entries = load_trace(Path(wl.trace.path), wl.trace.format, wl.trace.sha256).entries
        return cls(
            spec,
            injected=injected,
            conversations=conversations,
            trace=entries,
            tokenizer=tokenizer,
            audit=audit,
        )

    def with_audit(
        self, injected: Mapping[int, RequestPlan] | None, audit: AuditLookup | None
    ) -> Planner:
        """This planner (its dataset, trace and tokenizer as loaded) with ``injected`` plans
        and an ``audit`` lookup in place of its own."""
        out = copy.copy(self)
        out.injected = dict(injected or {})
        out.audit = audit
        for i, p in out.injected.items():
            if p.id != i:
                raise ConfigError(f"injected plan at id {i} carries id {p.id}")
        return out

    @property
    def dataset_rows(self) -> int | None:
        """Conversations of the dataset (None for a synthetic workload or a trace)."""
        return None if self._rows is None else len(self._rows)

    @property
    def trace(self) -> tuple[TraceEntry, ...] | None:
        """The trace's entries (None when the workload is not a trace)."""
        return self._trace

    def plan(self, i: int) -> RequestPlan:
        injected = self.injected.get(i)
        if injected is not None:
            return injected
        if self.audit is not None and (audited := self.audit.at(i, self)) is not None:
            return audited
        return self.generated(i)

    def turns(self, position: int) -> int:
        """How many turns the request at ``position`` has: its conversation's (at most
        ``sessions.max_turns``) in a multi-turn workload, else 1 (injected and audit plans are
        always one request)."""
        if self._rows is None or self.workload.sessions is None:
            return 1
        if position in self.injected or (
            self.audit is not None and self.audit.at(position, self) is not None
        ):
            return 1
        n = len(self._conversation(position).turns)
        return n if self._max_turns is None else min(n, self._max_turns)

    def turn_plan(self, position: int, turn: int, answers: Sequence[str]) -> RequestPlan:
        """Turn ``turn`` (>= 1) of the session at ``position``: its conversation so far, with
        ``answers`` (the real answers to turns ``0 .. turn-1``, in order) as the assistant's."""
        assert 1 <= turn < self.turns(position), f"session {position} has no turn {turn}"
        assert len(answers) == turn, "one answer per earlier turn"
        return self._turn(position, turn, answers, self._phase(position))

    def generated(self, i: int, phase: str | None = None) -> RequestPlan:
        """The workload's own plan at position ``i`` (never an injected one; a session's first
        turn), in ``phase`` (default: warm-up or measure by position)."""
        phase = phase or self._phase(i)
        if self._rows is not None:
            return self._turn(i, 0, (), phase)
        # seeding a numpy generator costs more than the rest of a plan: only when drawing
        rng = prf_rng(self._seed, b"length", i) if self._draws else None
        if self._trace is not None:
            entry = self._trace[i % len(self._trace)]
            block = self.workload.trace.block_tokens if self.workload.trace else 512
            prompt = trace_prompt(self._seed, i, entry, block)
            return RequestPlan(
                i, phase, prompt, entry.output_length, entry.input_length,
                extra_body=self._sampling(i),
            )  # fmt: skip
        words = max(draw_length(self.workload.input_tokens, rng), SALT_WORDS)
        out = draw_length(self.workload.output_tokens, rng)
        if self.tokenizer is not None:
            prompt = exact_prompt(self.tokenizer, self._seed, i, words)
        else:
            prompt = synthetic_prompt(self._seed, i, words)
        if self._prefixes:
            group = int.from_bytes(prf(self._seed, b"prefix-group", i)[:8], "big")
            prompt = f"{self._prefixes[group % len(self._prefixes)]} {prompt}"
            words += self.workload.prefix.tokens if self.workload.prefix else 0
        return RequestPlan(i, phase, prompt, out, words, extra_body=self._sampling(i))

    def words(self, i: int, n: int) -> list[str]:
        """``n`` vocabulary words drawn for id ``i`` (no salt): padding of the same form as a
        synthetic prompt's body, for plans that resize a prompt."""
        return self._words(b"pad", i, n).split(" ") if n else []

    # ---- internals ----

    def _phase(self, position: int) -> str:
        return "warmup" if position < self.warmup else "measure"

    def _sampling(self, i: int) -> dict[str, object]:
        return {} if self.sampling is None else sampling_body(self.sampling, self._seed, i)

    def _words(self, label: bytes, i: int, n: int) -> str:
        return " ".join(VOCAB[b] for b in hashlib.shake_128(prf(self._seed, label, i)).digest(n))

    def _conversation(self, position: int) -> Conversation:
        assert self._rows is not None
        return self._rows[self._order[position % len(self._rows)]]

    def _turn(self, position: int, turn: int, answers: Sequence[str], phase: str) -> RequestPlan:
        conv = self._conversation(position)
        rid = turn_id(position, turn)
        asked = conv.turns[turn].max_tokens
        if asked is None:
            rng = prf_rng(self._seed, b"length", rid) if self._draws else None
            asked = draw_length(self.workload.output_tokens, rng)
        history: list[tuple[str, str]] = [] if conv.system is None else [("system", conv.system)]
        for k in range(turn):
            history += [("user", conv.turns[k].user), ("assistant", answers[k])]
        history.append(("user", conv.turns[turn].user))
        multi = self.workload.sessions is not None
        session = (position, turn) if multi else (None, None)
        if len(history) == 1:  # a plain prompt: planned exactly as v0.1 planned dataset rows
            return RequestPlan(
                rid, phase, history[0][1], asked, None, extra_body=self._sampling(rid),
                session=session[0], turn=session[1],
            )  # fmt: skip
        messages: Messages = tuple(history)
        return RequestPlan(
            rid, phase, render_messages(messages), asked, None, extra_body=self._sampling(rid),
            messages=messages, session=session[0], turn=session[1],
        )  # fmt: skip
