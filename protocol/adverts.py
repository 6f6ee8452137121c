"""What a miner sells: its GPU groups (normalised type names) and models with prices.

``normalise_gpu_type`` turns vendor device names into the short types jobs ask for
(``NVIDIA A100-SXM4-80GB`` -> ``a100-80gb``); ``gpu_type_matches`` lets a family name
match its sizes. Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from protocol.limits import MAX_CONCURRENCY, MAX_GPU_COUNT, MAX_GPU_GROUPS, MAX_MODELS, MAX_VRAM_GB
from protocol.wirefields import GPU_TYPE_RE, FieldReader, ProtocolError

UNITS = ("token", "item", "second", "byte")

_GPU_FAMILIES = re.compile(
    r"(rtx a\d{4}|rtx \d{4}(?: ti| super)?|gtx \d{3,4}(?: ti)?|titan \w+|"
    r"[ahlbvtkpm]\d{1,3}[a-z]?|mi\d{2,3}x?)"
)


_VENDOR_WORDS = re.compile(
    r"\b(nvidia|geforce|tesla|quadro|amd|radeon|instinct|pcie|sxm\d?|hbm\d?e?)\b"
)


def normalise_gpu_type(name: str, vram_gb: int | None = None) -> str:
    """A vendor device name as a short lowercase type: "NVIDIA A100-SXM4-80GB" -> "a100-80gb".

    Families sold in several memory sizes (A100) carry the size; ``vram_gb`` decides it
    when the name does not say (without either, the family name stays, as a requirement
    that any size meets). A name that is already normalised comes back unchanged.
    """
    text = name.strip().lower()
    if GPU_TYPE_RE.fullmatch(text) and " " not in text:
        return text
    text = re.sub(
        r"\b(nvidia|geforce|tesla|quadro|amd|radeon|instinct|pcie|sxm\d?|hbm\d?e?)\b", " ", text
    )
    text = re.sub(r"[_/-]", " ", text)
    text = re.sub(r"\s+", " ", text).strip()
    found = _GPU_FAMILIES.search(text)
    if found is None:
        slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
        return slug[:48] or "unknown"
    family = found.group(1).replace(" ", "-")
    if family == "a100":
        size = re.search(r"(\d{2})\s*gb", text)
        gb = int(size.group(1)) if size else vram_gb
        if gb is not None:  # no size known (a requirement): the family matches both
            family = "a100-80gb" if gb > 48 else "a100-40gb"
    return family


def gpu_type_matches(offered: str, wanted: str) -> bool:
    """``wanted`` names the type or its family: "a100" matches "a100-80gb"."""
    return offered == wanted or offered.startswith(wanted + "-")


@dataclass(frozen=True)
class GpuInfo:
    """One group of identical devices on a miner (``type`` on the wire)."""

    gpu_type: str  # normalised: v100, a100-80gb, rtx-4090, cpu
    vram_gb: int  # per device, GiB rounded to the nearest integer; 0 for cpu
    count: int
    utilisation: int = 0  # percent, 0-100

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.gpu_type,
            "vram_gb": self.vram_gb,
            "count": self.count,
            "utilisation": self.utilisation,
        }

    @classmethod
    def from_json(cls, data: object, where: str) -> GpuInfo:
        r = FieldReader(where, data)
        gpu = cls(
            gpu_type=r.text("type", pattern=GPU_TYPE_RE),
            vram_gb=r.integer("vram_gb", 0, MAX_VRAM_GB),
            count=r.integer("count", 1, MAX_GPU_COUNT),
            utilisation=r.integer("utilisation", 0, 100, optional=True) or 0,
        )
        r.done({"type", "vram_gb", "count", "utilisation"})
        return gpu


@dataclass(frozen=True)
class ModelOffer:
    name: str
    runtime: str
    unit: str
    price_uait_per_unit: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object, where: str) -> ModelOffer:
        r = FieldReader(where, data)
        offer = cls(
            name=r.text("name", pattern=re.compile(r"^\S.{0,127}$")),
            runtime=r.text("runtime", max_chars=32),
            unit=r.text("unit", choices=UNITS),
            price_uait_per_unit=r.integer("price_uait_per_unit", 0, 2**53 - 1),
        )
        r.done({f.name for f in fields(cls)})
        return offer


@dataclass(frozen=True)
class Advert:
    gpus: tuple[GpuInfo, ...]
    models: tuple[ModelOffer, ...]
    max_concurrency: int
    software_version: str

    def to_json(self) -> dict[str, Any]:
        return {
            "gpus": [g.to_json() for g in self.gpus],
            "models": [m.to_json() for m in self.models],
            "max_concurrency": self.max_concurrency,
            "software_version": self.software_version,
        }

    @classmethod
    def from_json(cls, data: object, where: str) -> Advert:
        r = FieldReader(where, data)
        gpus = tuple(
            GpuInfo.from_json(g, f"{where}.gpus[{i}]")
            for i, g in enumerate(r.array("gpus", MAX_GPU_GROUPS))
        )
        models = tuple(
            ModelOffer.from_json(m, f"{where}.models[{i}]")
            for i, m in enumerate(r.array("models", MAX_MODELS))
        )
        if not gpus:
            raise ProtocolError(f"{where}: field 'gpus' needs at least one entry (cpu counts)")
        if len({m.name for m in models}) != len(models):
            raise ProtocolError(f"{where}: field 'models' names a model twice")
        advert = cls(
            gpus=gpus,
            models=models,
            max_concurrency=r.integer("max_concurrency", 1, MAX_CONCURRENCY),
            software_version=r.text("software_version", max_chars=64),
        )
        r.done({f.name for f in fields(cls)})
        return advert

    def offer(self, model: str) -> ModelOffer | None:
        return next((m for m in self.models if m.name == model), None)

    @functools.cached_property
    def model_names(self) -> frozenset[str]:
        return frozenset(m.name for m in self.models)
