"""The planner: v0.1's plans unchanged, shared prefixes, multi-turn sessions, traces, exact
prompt lengths, and the protocol's one-line refusals of workloads that do not fit together."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest

from inferaudit.audit.specs import SpecInputs, build_specs
from inferaudit.errors import ConfigError
from inferaudit.measure.datasets import load_conversations
from inferaudit.measure.planner import TURN_SHIFT, Planner, render_messages, turn_id
from inferaudit.measure.probes.plan import PROBE_ID_BASE
from inferaudit.measure.protocol import (
    Arrivals,
    Endpoint,
    Length,
    Load,
    RunSpec,
    Sampling,
    Sessions,
    SharedPrefix,
    Trace,
    Workload,
)
from inferaudit.measure.rundir import file_sha256
from inferaudit.measure.samples import sample_path
from inferaudit.measure.tokenizer import load_tokenizer
from inferaudit.measure.traces import load_trace
from inferaudit.measure.workload import SALT_WORDS, RequestPlan, commit_seed, salt

SECRET = bytes(range(32))
BASE = "http://127.0.0.1:9/v1"


def spec(workload: Workload, load: Load | None = None, **extra: object) -> RunSpec:
    return commit_seed(
        RunSpec(
            endpoint=Endpoint(base_url=BASE, model="m"),
            load=load or Load(rate=1, requests=10, warmup=3),
            workload=workload,
            sampling=Sampling(seed_per_request=True),
            **extra,  # type: ignore[arg-type]
        ),
        SECRET,
    )


def digest(plans: list[RequestPlan]) -> str:
    h = hashlib.sha256()
    for p in plans:
        fields = (p.id, p.phase, p.prompt, p.max_tokens, p.input_tokens)
        h.update(repr((*fields, sorted(p.extra_body.items()))).encode())
    return h.hexdigest()


def test_synthetic_and_prompt_dataset_plans_are_v01s() -> None:
    # Pinned with the Planner as it was before shared prefixes, sessions and traces (the same
    # spec, seed and sample file): old protocols keep planning exactly the same requests.
    synthetic = Workload(
        input_tokens=Length.parse("20-40"), output_tokens=Length.parse("4-9:normal")
    )
    planner = Planner(spec(synthetic))
    assert digest([planner.plan(i) for i in range(30)]) == (
        "1fc73f78af9f0a79dbd302e8412d7f755507afb1db490c48cb5409aceed9a684"
    )
    path = sample_path("prompts.jsonl")
    rows = Workload(dataset=str(path), output_tokens=Length.parse("4-9"))
    planner = Planner(spec(rows), conversations=load_conversations(path, None))
    plans = [planner.plan(i) for i in range(30)]
    assert digest(plans) == "7092c0e141aa2b66352bc993c19c122603ba90f5352f9a9777325cb8a41b9170"
    assert all(p.messages is None and p.session is None and p.turn is None for p in plans)


def test_shared_prefixes_are_one_of_g_then_a_unique_salted_prompt() -> None:
    wl = Workload(input_tokens=Length(lo=24, hi=24), prefix=SharedPrefix(tokens=40, groups=3))
    planner = Planner(spec(wl))
    plans = [planner.plan(i) for i in range(60)]
    heads = {" ".join(p.prompt.split()[:40]) for p in plans}
    assert len(heads) == 3  # exactly G shared system prompts, every one used
    for p in plans:
        words = p.prompt.split()
        assert len(words) == 64 and p.input_tokens == 64
        assert " ".join(words[40 : 40 + SALT_WORDS]) == salt(SECRET, p.id)  # then its own salt
    assert len({p.prompt for p in plans}) == 60
    # The prefixes come from the secret seed: another seed, other prefixes.
    other = Planner(commit_seed(spec(wl).model_copy(update={"secret_seed": None}), bytes(32)))
    assert not heads & {" ".join(other.plan(i).prompt.split()[:40]) for i in range(60)}


def test_sessions_carry_the_real_answers_in_order() -> None:
    path = sample_path("sharegpt.json")
    conversations = load_conversations(path, "sharegpt")
    wl = Workload(
        dataset=str(path), dataset_format="sharegpt", sessions=Sessions(think_time_s=0.5),
        output_tokens=Length(lo=7, hi=7),
    )  # fmt: skip
    planner = Planner(spec(wl), conversations=conversations)
    turn_counts = sorted(len(c.turns) for c in conversations)
    assert sorted(planner.turns(p) for p in range(6)) == turn_counts == [1, 1, 2, 2, 3, 4]
    position = next(p for p in range(6) if planner.turns(p) == 4)
    first = planner.plan(position)
    assert (first.id, first.session, first.turn, first.max_tokens) == (position, position, 0, 7)
    answers = ["first answer", "second answer", "third answer"]
    last = planner.turn_plan(position, 3, answers)
    assert last.id == position + (3 << TURN_SHIFT) == turn_id(position, 3)
    assert (last.session, last.turn, last.phase) == (position, 3, first.phase)
    assert last.messages is not None
    roles = [role for role, _ in last.messages]
    assert roles[-7:] == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert [text for role, text in last.messages if role == "assistant"] == answers
    assert last.prompt == render_messages(last.messages)
    # the conversation's own user turns, in order (its recorded answers are not sent)
    conv = next(c for c in conversations if len(c.turns) == 4)
    assert [t for r, t in last.messages if r == "user"] == [t.user for t in conv.turns]
    with pytest.raises(AssertionError):
        planner.turn_plan(position, 4, [*answers, "x"])
    capped = Planner(
        spec(wl.model_copy(update={"sessions": Sessions(max_turns=2)})),
        conversations=conversations,
    )
    assert max(capped.turns(p) for p in range(6)) == 2
    # an injected plan is one request, whatever the conversation at its position
    injected = RequestPlan(position, "measure", "probe", 4)
    assert (
        Planner(spec(wl), conversations=conversations, injected={position: injected}).turns(
            position
        )
        == 1
    )


def test_probes_plan_first_turns_at_their_own_ids() -> None:
    # conformance probes and audit requests are planned at ids far above any load position
    path = sample_path("sharegpt.json")
    wl = Workload(dataset=str(path), dataset_format="sharegpt", sessions=Sessions())
    planner = Planner(spec(wl), conversations=load_conversations(path, "sharegpt"))
    probe = planner.generated(PROBE_ID_BASE + 3, phase="probe")
    assert (probe.id, probe.turn, probe.phase) == (PROBE_ID_BASE + 3, 0, "probe")


def test_render_messages_known_answer() -> None:
    text = render_messages((("system", "be brief"), ("user", "hi"), ("assistant", "yo")))
    assert text == "system: be brief\n\nuser: hi\n\nassistant: yo\n\nassistant:"


def test_a_system_prompt_is_sent_as_messages_without_sessions() -> None:
    path = sample_path("sharegpt.json")
    conversations = load_conversations(path, "sharegpt")
    wl = Workload(dataset=str(path), dataset_format="sharegpt")
    planner = Planner(spec(wl), conversations=conversations)
    plans = [planner.plan(i) for i in range(6)]
    with_system = [p for p in plans if p.messages is not None]
    assert len(with_system) == sum(c.system is not None for c in conversations) == 1
    assert with_system[0].messages is not None and with_system[0].messages[0][0] == "system"
    assert all(p.session is None and planner.turns(p.id) == 1 for p in plans)


def test_trace_prompts_have_the_entries_lengths_and_shared_blocks() -> None:
    path = sample_path("mooncake.jsonl")
    entries = load_trace(path, "mooncake").entries
    trace = Trace(path=str(path), sha256=file_sha256(path), format="mooncake")
    load = Load(rate=10, arrivals=Arrivals.trace, requests=len(entries))
    planner = Planner.from_spec(spec(Workload(trace=trace), load))
    assert planner.trace == entries
    for i, entry in enumerate(entries):
        p = planner.plan(i)
        assert len(p.prompt.split()) == entry.input_length == p.input_tokens
        assert p.max_tokens == entry.output_length
    a, b = next(
        (i, j)
        for i in range(len(entries))
        for j in range(i + 1, len(entries))
        if entries[i].hash_ids[:1] == entries[j].hash_ids[:1] and entries[i].hash_ids
    )
    shared = min(512, entries[a].input_length, entries[b].input_length)
    assert planner.plan(a).prompt.split()[:shared] == planner.plan(b).prompt.split()[:shared]


def test_exact_input_tokens_with_the_runs_tokenizer(word_tokenizer: Path) -> None:
    wl = Workload(input_tokens=Length.parse("30-90"), exact_input_tokens=True)
    s = spec(wl, tokenizer_sha256="0" * 64)
    tok = load_tokenizer(word_tokenizer)
    planner = Planner(s, tokenizer=tok)
    for i in range(10):
        p = planner.plan(i)
        assert p.input_tokens is not None and tok.count(p.prompt) == p.input_tokens
    with pytest.raises(ConfigError, match="need the run's tokenizer"):
        Planner(s)
    # the load workers get the planner pickled: its tokenizer travels as its file
    shipped = pickle.loads(pickle.dumps(planner))
    assert [shipped.plan(i) for i in range(10)] == [planner.plan(i) for i in range(10)]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"multi_turn": True}, "--multi-turn sends a dataset's conversations: give --dataset"),
        ({"prefix_tokens": 64, "dataset": "sharegpt.json"}, "--prefix-tokens shapes synthetic"),
        ({"trace": "mooncake.jsonl", "rate": 2.0}, "--trace replays the trace's own schedule"),
        ({"trace": "mooncake.jsonl", "requests": 999}, "entries; --warmup 0 and --requests 999"),
        ({"dataset": "nothing-here.json"}, "--dataset nothing-here.json: no such file"),
        ({"burstiness": 0.5, "arrivals": "constant"}, "burstiness is the shape of gamma"),
        ({"max_concurrency": 2, "rate": None, "concurrency": 2}, "shape an open loop"),
    ],
)
def test_workloads_that_do_not_fit_are_one_line(inputs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"endpoint": BASE, "model": "m", "rate": 1.0, "requests": 4}
    for key in ("dataset", "trace"):
        if isinstance(inputs.get(key), str):
            name = str(inputs[key])
            inputs = {**inputs, key: sample_path(name) if "nothing" not in name else Path(name)}
    if "trace" in inputs and "rate" not in inputs:
        fields.pop("rate")
    if inputs.get("trace") and "requests" not in inputs:
        fields.pop("requests")
    fields.update(inputs)
    if fields.get("rate") is None:
        fields.pop("rate", None)
    with pytest.raises(ConfigError) as err:
        build_specs(SpecInputs(**fields))  # type: ignore[arg-type]
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_trace_run_replays_every_entry_by_default() -> None:
    path = sample_path("mooncake.jsonl")
    n = len(load_trace(path).entries)
    (s,) = build_specs(SpecInputs(endpoint=BASE, model="m", trace=path, warmup=2))
    assert s.load.arrivals == "trace" and s.load.requests == n - 2
    assert s.workload.trace is not None and s.workload.trace.format == "mooncake"
    assert s.load.rate is not None and s.load.rate > 0
