"""The side-endpoint scraper: before / during / after samples from a tiny server on 127.0.0.1
whose counter rises by one per GET, failures as lines (never exceptions), the API key's rule,
the default-URL probe, and an end-to-end run against the twin whose sample files are bound by
its signed evidence."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from time import perf_counter_ns, sleep

import orjson
import pytest
from aiohttp import web
from pydantic import BaseModel

from inferaudit.audit.run import RunOptions, run_verification
from inferaudit.audit.sidecars import (
    SPOOL_SUFFIX,
    Scraper,
    fetch,
    key_headers,
    metrics_url,
    probe_metrics,
)
from inferaudit.errors import ConfigError, DataError, EndpointError
from inferaudit.measure.protocol import Endpoint, Length, Load, RunSpec, Workload
from inferaudit.measure.records import read_records
from inferaudit.measure.scrapes import read_telemetry, telemetry_reading
from inferaudit.measure.server_metrics import Quantities, read_samples, reading
from inferaudit.measure.telemetry.agent_wire import AgentSnapshot, render_agent
from inferaudit.measure.telemetry.model import DeviceSample, Vendor
from inferaudit.seal.trust import default_policy
from inferaudit.seal.verify import verify_run
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions

Handler = Callable[[web.Request], Awaitable[web.Response]]
COUNTER = (
    '# TYPE vllm:request_success_total counter\nvllm:request_success_total{{model_name="m"}} {n}\n'
)


def fixed(body: bytes, status: int = 200) -> Handler:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=body, status=status)

    return handler


class Side:
    """A tiny aiohttp server in a thread of its own: ``/metrics`` answers a counter that rises
    by one per GET; other paths fail in one way each."""

    def __init__(self) -> None:
        self.gets = 0
        self.agent_gets = 0
        self.auth: list[str | None] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10)

    def stop(self) -> None:
        async def down() -> None:
            assert self._runner is not None
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(down(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._up())
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _up(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/fail", fixed(b"boom", 500))
        app.router.add_get("/html", fixed(b"<html><p>hi</p></html>\n"))
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/trickle", self.trickle)
        app.router.add_get("/big", fixed(b"up 1\n" * 400))
        app.router.add_get("/latin1", fixed(b"up 1 \xff\n"))
        app.router.add_get("/moved", self.moved)
        app.router.add_get("/samples", self.samples)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def metrics(self, request: web.Request) -> web.Response:
        self.gets += 1
        self.auth.append(request.headers.get("Authorization"))
        return web.Response(text=COUNTER.format(n=self.gets))

    async def moved(self, _: web.Request) -> web.Response:
        raise web.HTTPFound("/metrics")

    async def slow(self, _: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(text="up 1\n")

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(40):
            await resp.write(b"up 1\n")
            await asyncio.sleep(0.02)
        return resp

    async def samples(self, _: web.Request) -> web.Response:
        self.agent_gets += 1
        device = DeviceSample(device_id="GPU-0", vendor=Vendor.NVIDIA, tool="nvidia-smi",
                              power_w=100.0 + self.agent_gets)  # fmt: skip
        snapshot = AgentSnapshot(sequence=self.agent_gets, sampled_at_unix_ns=1,
                                 samples=(device,), tools=())  # fmt: skip
        return web.Response(text=render_agent(snapshot), content_type="application/json")


@pytest.fixture
def side() -> Iterator[Side]:
    server = Side()
    server.start()
    yield server
    server.stop()


def test_before_during_after_on_the_epoch_clock(side: Side, tmp_path: Path) -> None:
    path = tmp_path / "server-metrics.jsonl"
    scraper = Scraper(side.url + "/metrics", path, reading, interval_s=0.05)
    scraper.before()
    epoch = perf_counter_ns()  # the load's epoch comes after the "before" sample
    sleep(0.4)
    scraper.after()
    summary = scraper.finish(epoch)
    samples = read_samples(path)
    phases = [s.phase for s in samples]
    assert phases[0] == "before" and phases[-1] == "after"
    assert phases.count("before") == 1 and phases.count("after") == 1
    assert phases.count("during") >= 1
    assert len(samples) == side.gets  # one GET per sample, none lost, none extra
    # the counter rose by one per GET: the samples are the server's answers in order
    counts = [s.quantities.requests_finished for s in samples]
    assert counts == [float(n) for n in range(1, side.gets + 1)]
    assert all(s.ok and s.error is None for s in samples)
    times = [s.t_ns for s in samples]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert samples[0].t_ns < 0 < samples[-1].t_ns  # before the epoch, after it
    assert samples[1].t_ns >= samples[0].t_ns + 50_000_000  # "during" waits its interval
    assert all(s.span_ns > 0 for s in samples)
    assert (summary.url, summary.samples, summary.failed) == (side.url + "/metrics", side.gets, 0)
    assert not scraper.spool.exists()


def test_the_spool_holds_each_sample_as_taken(side: Side, tmp_path: Path) -> None:
    path = tmp_path / "server-metrics.jsonl"
    scraper = Scraper(side.url + "/metrics", path, reading, interval_s=10.0)
    before = perf_counter_ns()
    scraper.before()
    spool = path.with_name(path.name + SPOOL_SUFFIX)
    (line,) = read_samples(spool)
    assert line.phase == "before" and line.t_ns >= before  # absolute perf_counter_ns there
    scraper.close()  # the run died: no sample file, the spool is kept
    assert not path.exists() and spool.exists()


@pytest.mark.parametrize(
    ("route", "error"),
    [
        ("/fail", "{url}: HTTP 500, expected 200"),
        ("/moved", "{url}: HTTP 302, expected 200"),  # never followed (the key stays here)
        ("/latin1", "{url}: answer is not UTF-8 (byte 5)"),
        ("/big", "{url}: answer over 1000 bytes"),
        ("/slow", "{url}: no answer within the timeout"),
        ("/trickle", "{url}: answer took over 0.3 s"),
    ],
)
def test_a_failing_server_gives_failed_lines_and_no_exception(
    side: Side, tmp_path: Path, route: str, error: str
) -> None:
    url = side.url + route
    path = tmp_path / "m.jsonl"
    scraper = Scraper(url, path, reading, interval_s=10.0, timeout_s=0.3, max_bytes=1000)
    scraper.before()
    scraper.after()
    summary = scraper.finish(0)
    samples = read_samples(path)
    assert [(s.phase, s.ok, s.error) for s in samples] == [
        ("before", False, error.format(url=url)),
        ("after", False, error.format(url=url)),
    ]
    assert samples[0].quantities == Quantities() and samples[0].series == {}
    assert (summary.samples, summary.failed) == (2, 2)


def test_unparsable_text_and_a_dead_port_are_failed_lines(side: Side, tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    scraper = Scraper(side.url + "/html", path, reading, interval_s=10.0)
    scraper.before()
    scraper.after()
    scraper.finish(0)
    errors = [s.error or "" for s in read_samples(path)]
    assert len(errors) == 2
    assert all(e.startswith("server metrics: not Prometheus text: line 1: ") for e in errors)

    dead = Scraper("http://127.0.0.1:9/metrics", tmp_path / "d.jsonl", reading, interval_s=10.0)
    dead.before()
    dead.after()
    assert dead.finish(0).failed == 2
    (first, _) = read_samples(tmp_path / "d.jsonl")
    assert first.error is not None and first.error.startswith("http://127.0.0.1:9/metrics: ")
    assert "\n" not in first.error


def test_a_bug_in_the_parser_is_not_lost(side: Side, tmp_path: Path) -> None:
    calls: list[str] = []

    def parse(text: str) -> BaseModel:
        calls.append(text)
        if len(calls) > 1:
            raise RuntimeError("parser bug")
        return reading(text)

    scraper = Scraper(side.url + "/metrics", tmp_path / "m.jsonl", parse, interval_s=0.02)
    scraper.before()
    sleep(0.2)
    with pytest.raises(RuntimeError, match="parser bug"):
        scraper.after()


def test_a_generic_parser_gives_its_own_fields(side: Side, tmp_path: Path) -> None:
    """The telemetry hook: any parse callable; here an agent's /samples read the default way."""
    path = tmp_path / "telemetry.jsonl"
    scraper = Scraper(side.url + "/samples", path, telemetry_reading, interval_s=10.0)
    scraper.before()
    scraper.after()
    scraper.finish(0)
    lines = read_telemetry(path)
    assert [(s.phase, s.ok) for s in lines] == [("before", True), ("after", True)]
    assert [[d.power_w for d in s.devices] for s in lines] == [[101.0], [102.0]]
    raw = orjson.loads(path.read_bytes().splitlines()[0])
    assert list(raw)[:5] == ["t_ns", "span_ns", "phase", "ok", "error"]


def test_the_key_goes_only_to_the_endpoints_own_origin(side: Side, tmp_path: Path) -> None:
    base = side.url + "/v1"
    assert key_headers(side.url + "/metrics", base, "k") == {"Authorization": "Bearer k"}
    assert key_headers(f"http://localhost:{side.port}/metrics", base, "k") == {}
    assert key_headers("http://127.0.0.1:1/metrics", base, "k") == {}
    assert key_headers(side.url + "/metrics", base, None) == {}
    assert key_headers("http://h/metrics", "http://h:80/v1", "k") == {"Authorization": "Bearer k"}
    url = side.url + "/metrics"
    scraper = Scraper(url, tmp_path / "m.jsonl", reading, 10.0, headers=key_headers(url, base, "k"))
    scraper.before()
    scraper.after()
    scraper.finish(0)
    assert side.auth == ["Bearer k", "Bearer k"]
    assert b"Bearer" not in (tmp_path / "m.jsonl").read_bytes()


@pytest.mark.parametrize(
    ("server_metrics", "telemetry", "message"),
    [
        ("localhost:8000/metrics", None,
         "--server-metrics 'localhost:8000/metrics': not an http(s) URL with a host"),
        ("http://h:99999/metrics", None,
         "--server-metrics 'http://h:99999/metrics': not a URL (Port out of range 0-65535)"),
        ("auto", "ftp://h/samples",
         "--telemetry 'ftp://h/samples': not an http(s) URL with a host"),
    ],
)  # fmt: skip
def test_a_bad_side_url_is_refused_before_anything_is_sent(
    tmp_path: Path, server_metrics: str, telemetry: str | None, message: str
) -> None:
    spec = RunSpec(
        endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", model="m"),
        workload=Workload(input_tokens=Length(lo=8, hi=8), output_tokens=Length(lo=4, hi=4)),
        load=Load(concurrency=1, requests=1),
    )
    options = RunOptions(checks=(), sign=False, server_metrics=server_metrics, telemetry=telemetry)
    with pytest.raises(ConfigError) as err:
        run_verification(spec, tmp_path / "run", options)
    assert err.value.diagnostics() == message
    assert not (tmp_path / "run").exists()


def test_probe_metrics(side: Side) -> None:
    assert metrics_url("http://h:8000/v1") == "http://h:8000/metrics"
    assert metrics_url("http://h:8000/v1/") == "http://h:8000/metrics"
    assert metrics_url("http://h:8000/api/v1") == "http://h:8000/api/metrics"
    assert probe_metrics(side.url + "/v1") == side.url + "/metrics"
    assert probe_metrics("http://127.0.0.1:9/v1") is None  # nothing listens
    assert side.gets == 1


def test_probe_refuses_what_is_not_prometheus_text(side: Side) -> None:
    with pytest.raises(DataError):
        fetch(side.url + "/big", max_bytes=10)
    with pytest.raises(EndpointError, match="HTTP 404"):
        fetch(side.url + "/nothing")
    # a server whose base path has no /metrics of its own answers 404 there
    assert probe_metrics(side.url + "/fail/v1") is None


def test_run_writes_the_samples_and_its_evidence_binds_them(side: Side, tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_dir = tmp_path / "run"
    with start_twin(TwinOptions(model="twin-m", ttft_ms=20, tpot_ms=5)) as twin:
        spec = RunSpec(
            endpoint=Endpoint(base_url=twin.base_url, model="twin-m"),
            workload=Workload(input_tokens=Length(lo=16, hi=16), output_tokens=Length(lo=8, hi=8)),
            load=Load(concurrency=2, requests=8),
            workers=1,
            max_client_lag_p99_ms=1000.0,  # a shared 2-core test machine; lag is not under test
        )
        options = RunOptions(
            checks=(), data_dir=home, server_metrics=side.url + "/metrics",
            telemetry=side.url + "/samples",
        )  # fmt: skip
        outcome = run_verification(spec, run_dir, options)
    assert len(read_records(run_dir / "records.jsonl")) == 8
    samples = read_samples(run_dir / "server-metrics.jsonl")
    assert samples[0].phase == "before" and samples[-1].phase == "after"
    assert len(samples) == side.gets and all(s.ok for s in samples)
    telemetry = read_telemetry(run_dir / "telemetry.jsonl")
    assert len(telemetry) == side.agent_gets >= 2
    meta = orjson.loads((run_dir / "meta.json").read_bytes())
    assert meta["server_metrics"] == {"url": side.url + "/metrics", "samples": side.gets,
                                      "failed": 0}  # fmt: skip
    assert meta["telemetry"] == {"url": side.url + "/samples", "samples": side.agent_gets,
                                 "failed": 0}  # fmt: skip
    # the records' clock: every request was sent between the before and the after sample
    load = [r for r in read_records(run_dir / "records.jsonl") if r.phase in ("warmup", "measure")]
    assert samples[0].t_ns < min(r.sent_ns for r in load if r.sent_ns is not None)
    assert samples[-1].t_ns > max(r.done_ns for r in load if r.done_ns is not None)

    statement = orjson.loads((run_dir / "statement.json").read_bytes())
    names = [s["name"] for s in statement["subject"]]
    assert "server-metrics.jsonl" in names and "telemetry.jsonl" in names
    assert outcome.evidence
    report = verify_run(run_dir, default_policy(home))
    assert report.ok, [f"{s.name}: {s.detail}" for s in report.failures()]

    data = bytearray((run_dir / "server-metrics.jsonl").read_bytes())
    data[len(data) // 2] ^= 0x01
    (run_dir / "server-metrics.jsonl").write_bytes(bytes(data))
    failures = {s.name: s.detail for s in verify_run(run_dir, default_policy(home)).failures()}
    assert "subjects" in failures and "server-metrics.jsonl" in failures["subjects"]


def test_off_and_auto_without_metrics(tmp_path: Path) -> None:
    with start_twin(TwinOptions(model="twin-m", ttft_ms=5, tpot_ms=1)) as twin:
        spec = RunSpec(
            endpoint=Endpoint(base_url=twin.base_url, model="twin-m"),
            workload=Workload(input_tokens=Length(lo=8, hi=8), output_tokens=Length(lo=4, hi=4)),
            load=Load(concurrency=1, requests=2),
            workers=1,
            max_client_lag_p99_ms=1000.0,
        )
        run_verification(spec, tmp_path / "off", RunOptions(checks=(), sign=False,
                                                               server_metrics=None))  # fmt: skip
    assert not (tmp_path / "off" / "server-metrics.jsonl").exists()
    meta = orjson.loads((tmp_path / "off" / "meta.json").read_bytes())
    assert meta["server_metrics"] == {"url": None, "samples": 0, "failed": 0, "note": "off"}
    assert "telemetry" not in meta
