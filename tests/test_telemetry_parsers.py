"""Telemetry parsers on fixtures written from each tool's documented format, the agent's wire
format, and the operator-reported figures — all known-answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferaudit.errors import DataError
from inferaudit.measure.telemetry.agent_wire import (
    AgentSnapshot,
    ToolRun,
    parse_agent,
    parse_agent_snapshot,
    render_agent,
)
from inferaudit.measure.telemetry.ascend import parse_npu_smi_info
from inferaudit.measure.telemetry.figures import EnergyMethod, reported_figures
from inferaudit.measure.telemetry.model import DeviceSample, Vendor
from inferaudit.measure.telemetry.nvidia import (
    NVIDIA_SMI_COMMAND,
    parse_dcgm_exporter,
    parse_nvidia_smi_csv,
)

DATA = Path(__file__).parent / "data" / "telemetry"
MIB = 1024 * 1024
S = 1_000_000_000


def fixture(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


# --- nvidia-smi ------------------------------------------------------------------------------


def test_nvidia_smi_command_is_the_documented_query() -> None:
    assert NVIDIA_SMI_COMMAND == (
        "nvidia-smi",
        "--query-gpu=index,uuid,name,power.draw,utilization.gpu,memory.used,memory.total,"
        "temperature.gpu,total_energy_consumption,clocks.sm,clocks.mem",
        "--format=csv,noheader,nounits",
    )


def test_nvidia_smi_csv_fixture() -> None:
    assert parse_nvidia_smi_csv(fixture("nvidia-smi.csv")) == [
        DeviceSample(
            device_id="GPU-5f3e2c1a-9b7d-4e2f-8a61-0c3d5e7f9a1b",
            vendor=Vendor.NVIDIA,
            tool="nvidia-smi",
            index=0,
            uuid="GPU-5f3e2c1a-9b7d-4e2f-8a61-0c3d5e7f9a1b",
            name="NVIDIA H100 80GB HBM3",
            power_w=312.45,
            energy_j=1234567890 / 1000,
            utilisation_pct=97.0,
            memory_used_bytes=71234 * MIB,
            memory_total_bytes=81559 * MIB,
            temperature_c=61.0,
            sm_clock_mhz=1980.0,
            memory_clock_mhz=2619.0,
        ),
        DeviceSample(
            device_id="GPU-0a1b2c3d-4e5f-6789-abcd-ef0123456789",
            vendor=Vendor.NVIDIA,
            tool="nvidia-smi",
            index=1,
            uuid="GPU-0a1b2c3d-4e5f-6789-abcd-ef0123456789",
            name="NVIDIA H100 80GB HBM3",
            power_w=88.1,
            energy_j=None,  # [N/A]
            utilisation_pct=0.0,
            memory_used_bytes=0,
            memory_total_bytes=81559 * MIB,
            temperature_c=33.0,
            sm_clock_mhz=345.0,
            memory_clock_mhz=2619.0,
        ),
    ]


def test_nvidia_smi_empty_output_is_no_device() -> None:
    assert parse_nvidia_smi_csv("") == []
    assert parse_nvidia_smi_csv("\n\n") == []


GOOD = "0, GPU-a, H100, 312.45, 97, 71234, 81559, 61, 1234567890, 1980, 2619"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "0, GPU-a, H100, 312.45, 97",
            "nvidia-smi: line 2: expected 11 fields (index,uuid,name,power.draw,utilization.gpu,"
            "memory.used,memory.total,temperature.gpu,total_energy_consumption,clocks.sm,"
            "clocks.mem), got 5",
        ),
        (
            GOOD.replace("312.45", "+312.45"),
            "nvidia-smi: line 2: power.draw: '+312.45' is not a decimal number",
        ),
        (GOOD.replace(" 97,", " 097,"), "nvidia-smi: line 2: utilization.gpu: '097' is not"),
        (GOOD.replace(" 97,", " 101,"), "nvidia-smi: line 2: utilization.gpu: 101 is above 100"),
        (GOOD.replace("71234", "7.5"), "nvidia-smi: line 2: memory.used: '7.5' is not a"),
        (GOOD.replace("GPU-a", "gpu0"), "nvidia-smi: line 2: uuid: 'gpu0' is not a GPU UUID"),
        (GOOD.replace("0, GPU", "-1, GPU"), "nvidia-smi: line 2: index: '-1' is not"),
    ],
)
def test_nvidia_smi_bad_line_is_one_line_error(line: str, message: str) -> None:
    text = "1, GPU-b, H100, 1, 1, 1, 1, 1, 1, 1, 1\n" + line + "\n"
    with pytest.raises(DataError) as err:
        parse_nvidia_smi_csv(text)
    assert err.value.diagnostics().startswith(message)
    assert "\n" not in err.value.diagnostics()


def test_nvidia_smi_same_gpu_twice_is_an_error() -> None:
    with pytest.raises(DataError, match="nvidia-smi: device GPU-a appears twice"):
        parse_nvidia_smi_csv(GOOD + "\n" + GOOD.replace("0, GPU-a", "1, GPU-a") + "\n")


# --- DCGM exporter ---------------------------------------------------------------------------


def test_dcgm_exporter_fixture() -> None:
    gpu0, gpu1 = parse_dcgm_exporter(fixture("dcgm-exporter.txt"))
    assert gpu0 == DeviceSample(
        device_id="GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52",
        vendor=Vendor.NVIDIA,
        tool="dcgm-exporter",
        index=0,
        uuid="GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52",
        name="Tesla T4",
        power_w=69.25,
        energy_j=9876543210 / 1000,
        utilisation_pct=100.0,
        memory_used_bytes=12912 * MIB,
        memory_total_bytes=None,  # not derived from FB_FREE (reserved memory)
        temperature_c=64.0,
        sm_clock_mhz=1590.0,
        memory_clock_mhz=5000.0,
    )
    assert (gpu1.index, gpu1.power_w, gpu1.energy_j, gpu1.memory_used_bytes) == (1, 27.5, 1.5, 0)
    assert (gpu1.sm_clock_mhz, gpu1.memory_clock_mhz, gpu1.temperature_c) == (300.0, 405.0, 38.0)


def test_dcgm_exporter_reads_fb_total_and_skips_mig_instances() -> None:
    text = (
        'DCGM_FI_DEV_FB_TOTAL{gpu="3",UUID="GPU-x",modelName="A100"} 40960\n'
        'DCGM_FI_DEV_POWER_USAGE{gpu="3",UUID="GPU-x",GPU_I_ID="1"} 999\n'
        'DCGM_FI_DEV_POWER_USAGE{gpu="3",UUID="GPU-x",GPU_I_ID=""} 250\n'
    )
    (only,) = parse_dcgm_exporter(text)
    assert (only.device_id, only.index, only.name) == ("GPU-x", 3, "A100")
    assert (only.memory_total_bytes, only.power_w) == (40960 * MIB, 250.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-x"} 40\nDCGM_FI_DEV_GPU_UTIL{gpu=0} 5\n',
            "dcgm-exporter: line 2: ",
        ),
        ('DCGM_FI_DEV_GPU_UTIL{gpu="0"} 5\n', "dcgm-exporter: DCGM_FI_DEV_GPU_UTIL: a sample"),
        (
            'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-x"} 5\n'
            'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-x",device="nvidia0"} 6\n',
            "dcgm-exporter: DCGM_FI_DEV_GPU_UTIL: GPU-x appears twice",
        ),
        ('DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-x"} 150\n', "dcgm-exporter: GPU-x: utilisation"),
        ('DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-x"} NaN\n', "dcgm-exporter: DCGM_FI_DEV_GPU_TEMP"),
    ],
)
def test_dcgm_exporter_bad_text(text: str, message: str) -> None:
    with pytest.raises(DataError) as err:
        parse_dcgm_exporter(text)
    assert err.value.diagnostics().startswith(message)


# --- npu-smi info ----------------------------------------------------------------------------


def test_npu_smi_documented_example() -> None:
    assert parse_npu_smi_info(fixture("npu-smi-info-200i-a2.txt")) == [
        DeviceSample(
            device_id="npu0-chip0",
            vendor=Vendor.HUAWEI_ASCEND,
            tool="npu-smi",
            index=0,
            name="xxx",
            power_w=10.4,
            temperature_c=66.0,
            utilisation_pct=0.0,
            memory_used_bytes=957 * MIB,
            memory_total_bytes=10810 * MIB,
        )
    ]


def test_npu_smi_hbm_table_two_npus_and_process_table() -> None:
    first, second = parse_npu_smi_info(fixture("npu-smi-info-hbm.txt"))
    assert first == DeviceSample(
        device_id="npu0-chip0",
        vendor=Vendor.HUAWEI_ASCEND,
        tool="npu-smi",
        index=0,
        name="910B3",
        power_w=287.6,
        temperature_c=52.0,
        utilisation_pct=93.0,
        memory_used_bytes=58312 * MIB,  # HBM, not the DDR "0 / 0"
        memory_total_bytes=65536 * MIB,
    )
    assert (second.device_id, second.index, second.power_w, second.utilisation_pct) == (
        "npu1-chip0",
        1,
        None,  # NA
        0.0,
    )
    assert (second.memory_used_bytes, second.memory_total_bytes) == (3386 * MIB, 65536 * MIB)


def test_npu_smi_bad_text() -> None:
    good = fixture("npu-smi-info-200i-a2.txt")
    with pytest.raises(DataError, match=r"^npu-smi: no 'NPU Name \| Health"):
        parse_npu_smi_info("npu-smi: command failed\n")
    with pytest.raises(DataError, match=r"^npu-smi: line 7: Health: 'Fine' is not one of"):
        parse_npu_smi_info(good.replace("| OK    ", "| Fine  "))
    with pytest.raises(DataError, match=r"^npu-smi: line 8: expected 2 values"):
        parse_npu_smi_info(good.replace("957   / 10810", "957   / 10810  7"))
    with pytest.raises(DataError, match=r"^npu-smi: line 7: Power\(W\): '10,4' is not"):
        parse_npu_smi_info(good.replace("10.4", "10,4"))
    lines = good.splitlines()
    with pytest.raises(DataError, match=r"^npu-smi: line 7: a chip's first row without"):
        parse_npu_smi_info("\n".join(lines[:7] + lines[8:]))
    assert parse_npu_smi_info("") == []


# --- agent wire ------------------------------------------------------------------------------


def snapshot() -> AgentSnapshot:
    return AgentSnapshot(
        sequence=3,
        sampled_at_unix_ns=1_700_000_000_000_000_000,
        samples=tuple(parse_nvidia_smi_csv(fixture("nvidia-smi.csv"))),
        tools=(ToolRun(tool="nvidia-smi", path="/usr/bin/nvidia-smi"),),
    )


def test_agent_wire_round_trips() -> None:
    text = render_agent(snapshot())
    assert parse_agent(text) == list(snapshot().samples)
    assert parse_agent_snapshot(text.encode()) == snapshot()
    assert render_agent(parse_agent_snapshot(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "agent /samples: "),
        ('{"format": "other/1"}', "agent /samples: format: "),
        (
            render_agent(snapshot()).replace('"vendor":"nvidia"', '"vendor":"acme"', 1),
            "agent /samples: samples.0.vendor: ",
        ),
        (
            render_agent(snapshot()).replace('"power_w":312.45', '"power_w":-1', 1),
            "agent /samples: samples.0.power_w: ",
        ),
    ],
)
def test_agent_wire_malformed(text: str, message: str) -> None:
    with pytest.raises(DataError) as err:
        parse_agent(text)
    assert err.value.diagnostics().startswith(message)


# --- operator-reported figures ---------------------------------------------------------------


def sample(device: str = "d0", **figures: float) -> DeviceSample:
    return DeviceSample(device_id=device, vendor=Vendor.NVIDIA, **figures)  # type: ignore[arg-type]


def test_energy_from_the_counter_interpolated_at_the_window() -> None:
    samples = [
        (0 * S, sample(energy_j=1000, power_w=100, utilisation_pct=50)),
        (1 * S, sample(energy_j=1100, power_w=100, utilisation_pct=50)),
        (2 * S, sample(energy_j=1300, power_w=300, utilisation_pct=100)),
    ]
    got = reported_figures(samples, (S // 2, 3 * S // 2), output_tokens=300)
    assert got.operator_reported_energy_j == 150.0  # E(1.5 s) 1200 - E(0.5 s) 1050
    assert got.operator_reported_energy_per_output_token_j == 0.5
    assert got.operator_reported_energy_method is EnergyMethod.ENERGY_COUNTER
    assert got.operator_reported_devices == 1
    assert got.operator_reported_tokens_per_s_per_device == 300.0
    # 50 % until 1 s, then 50 -> 75 % at 1.5 s: (25 + 31.25) / 1 s
    assert got.operator_reported_mean_utilisation_pct == 56.25
    (device,) = got.per_device
    assert (device.samples, device.operator_reported_energy_coverage) == (3, 1.0)


def test_energy_from_power_when_no_counter() -> None:
    samples = [(0, sample(power_w=100)), (S, sample(power_w=200)), (2 * S, sample(power_w=200))]
    got = reported_figures(samples, (0, 2 * S), output_tokens=700)
    assert got.operator_reported_energy_j == 350.0  # 150 J + 200 J
    assert got.operator_reported_energy_per_output_token_j == 0.5
    assert got.operator_reported_energy_method is EnergyMethod.POWER_TRAPEZOID
    assert got.operator_reported_mean_utilisation_pct is None


def test_partial_coverage_is_scaled_and_said() -> None:
    samples = [(S, sample(power_w=100)), (2 * S, sample(power_w=300))]
    got = reported_figures(samples, (0, 4 * S), output_tokens=100)
    (device,) = got.per_device
    assert device.operator_reported_energy_coverage == 0.25
    assert got.operator_reported_energy_j == 800.0  # 200 J over 1 s of a 4 s window


def test_a_counter_going_backwards_falls_back_to_power() -> None:
    samples = [
        (0, sample(energy_j=5000, power_w=100)),
        (S, sample(energy_j=10, power_w=100)),
    ]
    got = reported_figures(samples, (0, S), output_tokens=10)
    assert got.operator_reported_energy_j == 100.0
    assert got.operator_reported_energy_method is EnergyMethod.POWER_TRAPEZOID
    assert got.per_device[0].note is not None and "went backwards" in got.per_device[0].note


def test_two_devices_mixed_methods_and_a_stated_device_count() -> None:
    samples = [
        (0, sample("a", energy_j=0, utilisation_pct=20)),
        (2 * S, sample("a", energy_j=400, utilisation_pct=20)),
        (0, sample("b", power_w=50, utilisation_pct=60)),
        (2 * S, sample("b", power_w=50, utilisation_pct=60)),
    ]
    got = reported_figures(samples, (0, 2 * S), output_tokens=1000, devices=4)
    assert got.operator_reported_energy_j == 500.0
    assert got.operator_reported_energy_per_output_token_j == 0.5
    assert got.operator_reported_energy_method is EnergyMethod.MIXED
    assert got.operator_reported_devices == 4
    assert got.operator_reported_tokens_per_s_per_device == 125.0  # 1000 / 2 s / 4
    assert got.operator_reported_mean_utilisation_pct == 40.0
    assert [d.device_id for d in got.per_device] == ["a", "b"]


def test_a_device_without_energy_withholds_energy_per_token() -> None:
    samples = [
        (0, sample("a", power_w=10)),
        (S, sample("a", power_w=10)),
        (0, sample("b", utilisation_pct=5)),
        (S, sample("b", utilisation_pct=5)),
    ]
    got = reported_figures(samples, (0, S), output_tokens=10)
    assert got.operator_reported_energy_j is None
    assert got.operator_reported_energy_per_output_token_j is None
    assert got.note == "no energy figure for b: energy per token not given"
    assert got.operator_reported_tokens_per_s_per_device == 5.0


def test_samples_far_outside_the_window_are_not_used() -> None:
    samples = [
        (0, sample(power_w=999)),
        (10 * S, sample(power_w=100)),
        (11 * S, sample(power_w=100)),
        (12 * S, sample(power_w=100)),
        (30 * S, sample(power_w=999)),
    ]
    got = reported_figures(samples, (10 * S, 12 * S), output_tokens=20)
    assert got.operator_reported_energy_j == 200.0
    assert got.per_device[0].samples == 3
