"""Device probe: NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package, module ``pynvml``),
with a CPU fallback when there is no driver, no GPU, or the device setting says ``cpu``.

Devices are grouped by normalised type and memory for the advert; VRAM is whole GiB,
rounded to the nearest (a "16 GB" V100 reports 15.8 GiB and must still match 16).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from protocol.messages import GpuInfo, normalise_gpu_type

log = logging.getLogger(__name__)


class DeviceError(ValueError):
    """The configured device does not exist on this host."""


@dataclass(frozen=True)
class Device:
    index: int
    name: str  # as the driver reports it
    gpu_type: str  # normalised
    vram_gb: int
    utilisation: int  # percent


@dataclass(frozen=True)
class Probe:
    devices: tuple[Device, ...]  # empty: CPU only
    runtime_device: str  # what runtimes get: cpu, cuda, cuda:N
    driver: str | None = None

    def gpus(self) -> tuple[GpuInfo, ...]:
        """The advert's GPU groups; a CPU-only host advertises one ``cpu`` entry."""
        if not self.devices:
            return (GpuInfo("cpu", 0, 1, cpu_utilisation()),)
        groups: dict[tuple[str, int], list[Device]] = {}
        for dev in self.devices:
            groups.setdefault((dev.gpu_type, dev.vram_gb), []).append(dev)
        return tuple(
            GpuInfo(t, v, len(devs), round(sum(d.utilisation for d in devs) / len(devs)))
            for (t, v), devs in sorted(groups.items())
        )


def gib(n_bytes: int) -> int:
    return int(n_bytes / 2**30 + 0.5)


def cpu_utilisation() -> int:
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 0
    return max(0, min(100, round(100 * load / (os.cpu_count() or 1))))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def nvml_devices() -> tuple[tuple[Device, ...], str | None]:
    """Every NVIDIA device NVML sees; empty when NVML or its driver is missing."""
    try:
        import pynvml
    except ImportError:
        return (), None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.info("no NVIDIA driver (%s); using the CPU", exc)
        return (), None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = _text(pynvml.nvmlDeviceGetName(handle))
            vram = gib(int(pynvml.nvmlDeviceGetMemoryInfo(handle).total))
            try:
                util = int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except pynvml.NVMLError:
                util = 0
            found.append(Device(index, name, normalise_gpu_type(name, vram), vram, util))
        return tuple(found), driver
    except pynvml.NVMLError as exc:
        log.warning("NVML probe failed (%s); using the CPU", exc)
        return (), None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def probe(device: str = "auto") -> Probe:
    """The devices this miner uses under the ``device`` setting (auto|cpu|cuda|cuda:N)."""
    if device == "cpu":
        return Probe((), "cpu")
    devices, driver = nvml_devices()
    if device == "auto":
        return Probe(devices, "cuda" if devices else "cpu", driver)
    if not devices:
        raise DeviceError(f"device {device} asked for, but no NVIDIA GPU was found")
    if device == "cuda":
        return Probe(devices, "cuda", driver)
    index = int(device.split(":", 1)[1])
    chosen = tuple(d for d in devices if d.index == index)
    if not chosen:
        raise DeviceError(f"device {device} does not exist (this host has {len(devices)} GPUs)")
    return Probe(chosen, device, driver)


def utilisation(found: Probe) -> int:
    """Current busy percent of the devices in use (GPUs via NVML, else the CPU load)."""
    if not found.devices:
        return cpu_utilisation()
    wanted = {d.index for d in found.devices}
    now, _ = nvml_devices()
    values = [d.utilisation for d in now if d.index in wanted]
    return round(sum(values) / len(values)) if values else 0
