"""The NVML probe on a real NVIDIA host (skipped where there is none)."""

from __future__ import annotations

import re

import pytest

from miner.gpu import DeviceError, nvml_devices, probe, utilisation

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_nvidia() -> None:
    if not nvml_devices()[0]:
        pytest.skip("no NVIDIA device visible through NVML")


def test_probe_reports_normalised_devices() -> None:
    found = probe("auto")
    assert found.runtime_device == "cuda" and found.driver
    for dev in found.devices:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", dev.gpu_type), dev
        assert dev.vram_gb > 0 and 0 <= dev.utilisation <= 100
    groups = found.gpus()
    assert sum(g.count for g in groups) == len(found.devices)
    assert 0 <= utilisation(found) <= 100


def test_probe_picks_one_device_or_refuses() -> None:
    first = probe("cuda:0")
    assert first.runtime_device == "cuda:0" and [d.index for d in first.devices] == [0]
    with pytest.raises(DeviceError, match="does not exist"):
        probe("cuda:99")
    assert probe("cpu").gpus()[0].gpu_type == "cpu"
