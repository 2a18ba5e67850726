"""`inferaudit agent` served on 127.0.0.1 with fake vendor tools on PATH, and its sampler."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from typer.testing import CliRunner

import inferaudit.cli.agent  # noqa: F401 - registers the command
from inferaudit.cli.app import app
from inferaudit.errors import ConfigError
from inferaudit.measure.telemetry.agent_wire import parse_agent, parse_agent_snapshot
from inferaudit.measure.telemetry.nvidia import NVIDIA_SMI_COMMAND, parse_nvidia_smi_csv
from inferaudit.measure.telemetry.sampler import FoundTool, Sampler, Tool, find_tools, run_tool

DATA = Path(__file__).parent / "data" / "telemetry"
CSV = DATA / "nvidia-smi.csv"
LAUNCH = "import inferaudit.cli.agent; from inferaudit.cli import main; main()"


def fake_tool(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(0o755)
    return path


def fake_nvidia_smi(directory: Path, csv: Path = CSV) -> Path:
    """Prints the fixture only when called with the agent's exact arguments."""
    expected = " ".join(NVIDIA_SMI_COMMAND[1:])
    return fake_tool(
        directory,
        "nvidia-smi",
        f'if [ "$*" != "{expected}" ]; then echo "unexpected args: $*" >&2; exit 2; fi\n'
        f'cat "{csv}"\n',
    )


class Agent:
    def __init__(self, proc: subprocess.Popen[str], url: str, banner: list[str]) -> None:
        self.proc, self.url, self.banner = proc, url, banner

    def get(self, route: str) -> bytes:
        with urllib.request.urlopen(self.url + route, timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("application/json")
            body: bytes = resp.read()
            return body


def start_agent(path_dirs: list[Path], *args: str) -> Iterator[Agent]:
    env = {**os.environ, "PATH": os.pathsep.join(str(d) for d in path_dirs)}
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "agent", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    banner: list[str] = []
    for line in proc.stdout:
        banner.append(line.rstrip("\n"))
        if line.startswith("listening on "):
            break
    else:
        proc.wait()
        assert proc.stderr is not None
        raise AssertionError(f"agent exited: {banner} {proc.stderr.read()}")
    try:
        yield Agent(proc, banner[-1].removeprefix("listening on "), banner)
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0  # SIGTERM ends it cleanly


@pytest.fixture
def nvidia_agent(tmp_path: Path) -> Iterator[Agent]:
    tools = tmp_path / "bin"
    tools.mkdir()
    fake_nvidia_smi(tools)
    yield from start_agent([tools, Path("/usr/bin"), Path("/bin")], "--interval", "0.2")


def test_agent_serves_the_parsed_samples_and_they_round_trip(nvidia_agent: Agent) -> None:
    expected = parse_nvidia_smi_csv(CSV.read_text(encoding="utf-8"))
    body = nvidia_agent.get("/samples")
    assert parse_agent(body) == expected
    snap = parse_agent_snapshot(body)
    assert snap.sequence >= 1 and snap.reason is None
    (run,) = snap.tools
    assert (run.tool, run.error, Path(run.path).name) == ("nvidia-smi", None, "nvidia-smi")
    assert "OPERATOR-REPORTED" in nvidia_agent.banner[0]
    assert any(line.strip().startswith("nvidia-smi: ") for line in nvidia_agent.banner)


def test_agent_keeps_sampling_and_its_sequence_grows(nvidia_agent: Agent) -> None:
    first = parse_agent_snapshot(nvidia_agent.get("/samples")).sequence
    later = first
    for _ in range(200):  # bounded by the pytest timeout, not by a wall-clock assertion
        later = parse_agent_snapshot(nvidia_agent.get("/samples")).sequence
        if later >= first + 2:
            break
        time.sleep(0.05)
    assert later >= first + 2
    health = nvidia_agent.get("/healthz")
    assert health.startswith(b'{"ok":true,"sequence":')


def test_agent_without_tools_says_so_and_serves_empty_samples(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for agent in start_agent([empty]):
        assert any("no accelerator tool found on PATH" in line for line in agent.banner)
        snap = parse_agent_snapshot(agent.get("/samples"))
        assert snap.samples == () and snap.tools == ()
        assert snap.reason == (
            "no accelerator tool found on PATH (looked for nvidia-smi, npu-smi) "
            "and no --dcgm-url given"
        )


def test_agent_rejects_bad_options() -> None:
    runner = CliRunner()
    for args, message in [
        (["agent", "--interval", "0"], "--interval: 0 is not a positive number of seconds"),
        (["agent", "--timeout", "-1"], "--timeout: -1 is not a positive number of seconds"),
        (["agent", "--port", "70000"], "--port: 70000 is not a port number (0-65535)"),
        (["agent", "--dcgm-url", "localhost:9400"], "--dcgm-url: 'localhost:9400' is not an"),
    ]:
        result = runner.invoke(app, args)
        assert isinstance(result.exception, ConfigError), args
        assert result.exception.diagnostics().startswith(message)


# --- the sampler in-process ------------------------------------------------------------------


def test_find_tools_in_tool_order(tmp_path: Path) -> None:
    npu = fake_tool(tmp_path, "npu-smi", "exit 0\n")
    nvidia = fake_nvidia_smi(tmp_path)
    assert find_tools(str(tmp_path)) == (
        FoundTool(Tool.NVIDIA_SMI, str(nvidia)),
        FoundTool(Tool.NPU_SMI, str(npu)),
    )


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('echo "NVIDIA-SMI has failed" >&2; exit 9\n', "exit status 9: NVIDIA-SMI has failed"),
        ("echo '0, GPU-a, H100'\n", "nvidia-smi: line 1: expected 11 fields"),
        ("printf '\\377\\376'\n", "its output is not UTF-8"),
        ("sleep 30\n", "no answer within 0.3 s"),
    ],
)
def test_a_failing_tool_is_named_with_its_error(tmp_path: Path, body: str, error: str) -> None:
    path = fake_tool(tmp_path, "nvidia-smi", body)
    samples, run = asyncio.run(run_tool(FoundTool(Tool.NVIDIA_SMI, str(path)), timeout_s=0.3))
    assert samples == []
    assert run.error is not None and run.error.startswith(error)


def test_dcgm_exporter_is_read_and_a_device_counts_once(tmp_path: Path) -> None:
    dcgm_text = (DATA / "dcgm-exporter.txt").read_text(encoding="utf-8")
    shared = "GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52"  # nvidia-smi reports it too
    csv = tmp_path / "one.csv"
    csv.write_text(f"0, {shared}, Tesla T4, 70.00, 99, 12000, 15360, 63, 5000, 1590, 5000\n")
    nvidia = fake_nvidia_smi(tmp_path, csv)

    async def scenario() -> tuple[list[str], tuple[str, ...], str | None]:
        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(text=dcgm_text, content_type="text/plain")

        application = web.Application()
        application.router.add_get("/metrics", metrics)
        runner = web.AppRunner(application, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            import aiohttp

            sampler = Sampler(
                (FoundTool(Tool.NVIDIA_SMI, str(nvidia)),),
                timeout_s=5,
                dcgm_url=f"http://127.0.0.1:{port}/metrics",
            )
            async with aiohttp.ClientSession() as session:
                snap = await sampler.round(session)
        finally:
            await runner.cleanup()
        kept = [f"{s.tool}:{s.device_id}" for s in snap.samples]
        return kept, snap.tools[1].duplicates_dropped, snap.tools[1].error

    kept, dropped, error = asyncio.run(scenario())
    assert kept == [
        f"nvidia-smi:{shared}",
        "dcgm-exporter:GPU-7b2d5e10-3c4a-4f6b-9e8d-1a2b3c4d5e6f",
    ]
    assert dropped == (shared,)
    assert error is None
