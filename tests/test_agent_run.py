"""An `inferaudit agent` (with a fake nvidia-smi) serving its samples to a real run against the
twin: telemetry.jsonl is written and bound, and the summary's operator-reported block comes from
it (and is recomputed by verify)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferaudit.audit.run import RunOptions, run_verification
from inferaudit.audit.specs import SpecInputs, build_specs
from inferaudit.measure.scrapes import read_telemetry
from inferaudit.seal.trust import default_policy
from inferaudit.seal.verify import verify_run
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions
from test_agent import fake_nvidia_smi, start_agent


def test_a_run_records_the_agents_telemetry_as_operator_reported(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    fake_nvidia_smi(tools)
    home = tmp_path / "home"
    agent_gen = start_agent([tools, Path("/usr/bin"), Path("/bin")], "--interval", "0.2")
    agent = next(agent_gen)
    try:
        with start_twin(TwinOptions(ttft_ms=100, tpot_ms=2)) as twin:
            (spec,) = build_specs(SpecInputs(
                endpoint=twin.base_url, model="inferaudit-twin", concurrency=2, requests=12,
                input_tokens="16", output_tokens="16", workers=1,
            ))  # fmt: skip
            options = RunOptions(checks=(), data_dir=home, telemetry=agent.url + "/samples")
            outcome = run_verification(spec, tmp_path / "run", options)
    finally:
        agent_gen.close()
    samples = read_telemetry(tmp_path / "run" / "telemetry.jsonl")
    assert samples[0].phase == "before" and samples[-1].phase == "after"
    assert all(s.ok and len(s.devices) == 2 for s in samples)
    reported = outcome.summary.reported
    assert reported is not None and reported.operator_reported_devices == 2
    assert reported.output_tokens == outcome.summary.output_tokens == 12 * 16
    utilisation = sorted(
        d.operator_reported_mean_utilisation_pct or 0.0 for d in reported.per_device
    )
    # the fixture's two GPUs, constant over the window (time-weighted means: float sums)
    assert utilisation == pytest.approx([0.0, 97.0], abs=1e-9)
    assert reported.operator_reported_mean_utilisation_pct == pytest.approx(48.5, abs=1e-9)
    report = verify_run(tmp_path / "run", default_policy(home))
    assert report.ok, [f"{c.name}: {c.detail}" for c in report.failures()]
