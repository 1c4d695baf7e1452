"""The accelerator catalogue: identify a device by PCI id or name and give its TPP and class.

Matching is by (PCI vendor, device id) first, then by exact NVML name, then by name with case and
spacing folded. The 3A090 class is computed here from TPP and die area (never read from data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

from gpucap.core.classify import Classification, Thresholds, classify, default_thresholds
from gpucap.core.data import read_yaml, require_mapping, shipped
from gpucap.core.errors import DataError

NVIDIA_PCI_VENDOR_ID = 0x10DE


@dataclass(frozen=True)
class Accelerator:
    """One accelerator model; `tpp` is dense TPP per device, `die_area_mm2` the applicable area."""

    id: str
    vendor: str
    name: str
    architecture: str
    pci_vendor_id: int
    pci_device_ids: tuple[int, ...]
    nvml_names: tuple[str, ...]
    tpp: int
    tpp_basis: str
    die_area_mm2: float | None
    datacenter: bool
    source: str
    confidence: str
    classification: Classification
    # Total DRAM bandwidth in GB/s (decimal), where published, with its own provenance.
    memory_bandwidth_gbps: float | None = None
    memory_bandwidth_source: str | None = None
    memory_bandwidth_confidence: str | None = None

    @property
    def eccn_class(self) -> str:
        return self.classification.eccn_class


@dataclass(frozen=True)
class Catalogue:
    """All known models plus the H100-equivalent reference (TPP of one H100 SXM5)."""

    accelerators: tuple[Accelerator, ...]
    h100e_tpp: int
    thresholds: Thresholds
    _by_id: dict[str, Accelerator] = field(init=False, repr=False, compare=False)
    _by_pci: dict[tuple[int, int], Accelerator] = field(init=False, repr=False, compare=False)
    _by_name: dict[str, Accelerator] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id = {a.id: a for a in self.accelerators}
        by_pci: dict[tuple[int, int], Accelerator] = {}
        by_name: dict[str, Accelerator] = {}
        for acc in self.accelerators:
            for dev in acc.pci_device_ids:
                by_pci.setdefault((acc.pci_vendor_id, dev), acc)
            for name in acc.nvml_names:
                by_name.setdefault(_fold(name), acc)
        # A frozen dataclass sets its derived indexes through object.__setattr__.
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(self, "_by_pci", by_pci)
        object.__setattr__(self, "_by_name", by_name)

    def get(self, model_id: str) -> Accelerator | None:
        """The model with this stable id, or None."""
        return self._by_id.get(model_id)

    def match(
        self,
        pci_device_id: int | None,
        name: str | None,
        pci_vendor_id: int = NVIDIA_PCI_VENDOR_ID,
    ) -> Accelerator | None:
        """Identify a device: PCI (vendor, device) id first, then its name; None if unknown."""
        if pci_device_id is not None:
            found = self._by_pci.get((pci_vendor_id, pci_device_id))
            if found is not None:
                return found
        if name:
            return self._by_name.get(_fold(name))
        return None

    def h100e(self, tpp: Fraction | int) -> Fraction:
        """TPP expressed in H100-equivalents."""
        return Fraction(tpp) / self.h100e_tpp


def _fold(name: str) -> str:
    return " ".join(name.replace("-", " ").split()).casefold()


def parse_pci_id(value: Any, path: str) -> int:
    """A PCI id written as '0x2330' (or an int) as an int, else DataError at `path`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise DataError(path, f"expected a hexadecimal PCI id like '0x2330', got {value!r}")


def _text(raw: dict[str, Any], key: str, path: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise DataError(f"{path}.{key}", "expected a non-empty string")
    return value


CONFIDENCE_LABELS = ("primary", "secondary", "derived", "unconfirmed")
_BANDWIDTH_KEYS = ("memory_bandwidth_source", "memory_bandwidth_confidence")


def _bandwidth(raw: dict[str, Any], path: str) -> tuple[float | None, str | None, str | None]:
    """`memory_bandwidth_gbps` with its source and confidence, or three Nones when absent."""
    value = raw.get("memory_bandwidth_gbps")
    if value is None:
        for key in _BANDWIDTH_KEYS:
            if key in raw:
                raise DataError(f"{path}.{key}", "given without memory_bandwidth_gbps")
        return None, None, None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise DataError(
            f"{path}.memory_bandwidth_gbps", f"expected a positive number of GB/s, got {value!r}"
        )
    source = _text(raw, "memory_bandwidth_source", path)
    confidence = _text(raw, "memory_bandwidth_confidence", path)
    if confidence not in CONFIDENCE_LABELS:
        raise DataError(
            f"{path}.memory_bandwidth_confidence",
            f"expected one of {' | '.join(CONFIDENCE_LABELS)}, got {confidence!r}",
        )
    return value, source, confidence


def parse_catalogue(doc: Any, thresholds: Thresholds, origin: str = "catalogue") -> Catalogue:
    """Validate a parsed catalogue file and classify every model in it."""
    top = require_mapping(doc, origin)
    rows = top.get("accelerators")
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{origin}.accelerators", "expected a non-empty list")
    models: list[Accelerator] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        path = f"{origin}.accelerators[{i}]"
        raw = require_mapping(row, path)
        model_id = _text(raw, "id", path)
        if model_id in seen:
            raise DataError(f"{path}.id", f"duplicate model id {model_id!r}")
        seen.add(model_id)
        tpp = raw.get("tpp")
        if isinstance(tpp, bool) or not isinstance(tpp, int) or tpp <= 0:
            raise DataError(f"{path}.tpp", f"expected a positive integer, got {tpp!r}")
        area = raw.get("die_area_mm2")
        if area is not None and (isinstance(area, bool) or not isinstance(area, int | float)):
            raise DataError(f"{path}.die_area_mm2", f"expected a number or null, got {area!r}")
        datacenter = raw.get("datacenter")
        if not isinstance(datacenter, bool):
            raise DataError(f"{path}.datacenter", "expected true or false")
        ids = raw.get("pci_device_ids") or []
        names = raw.get("nvml_names") or []
        if not isinstance(ids, list) or not isinstance(names, list):
            raise DataError(path, "pci_device_ids and nvml_names must be lists")
        bandwidth, bandwidth_source, bandwidth_confidence = _bandwidth(raw, path)
        models.append(
            Accelerator(
                id=model_id,
                vendor=_text(raw, "vendor", path),
                name=_text(raw, "name", path),
                architecture=_text(raw, "architecture", path),
                pci_vendor_id=parse_pci_id(raw.get("pci_vendor_id"), f"{path}.pci_vendor_id"),
                pci_device_ids=tuple(
                    parse_pci_id(v, f"{path}.pci_device_ids[{j}]") for j, v in enumerate(ids)
                ),
                nvml_names=tuple(str(n) for n in names),
                tpp=tpp,
                tpp_basis=_text(raw, "tpp_basis", path),
                die_area_mm2=None if area is None else float(area),
                datacenter=datacenter,
                source=_text(raw, "source", path),
                confidence=_text(raw, "confidence", path),
                classification=classify(tpp, area, datacenter, thresholds),
                memory_bandwidth_gbps=bandwidth,
                memory_bandwidth_source=bandwidth_source,
                memory_bandwidth_confidence=bandwidth_confidence,
            )
        )
    ref_id = _text(top, "h100e_reference_model", origin)
    ref = next((m for m in models if m.id == ref_id), None)
    if ref is None:
        raise DataError(f"{origin}.h100e_reference_model", f"no model with id {ref_id!r}")
    return Catalogue(tuple(models), ref.tpp, thresholds)


def load_catalogue(path: Path | None = None, thresholds: Thresholds | None = None) -> Catalogue:
    """Read a catalogue file (default: the shipped one)."""
    path = path or shipped("catalogue.yaml")
    return parse_catalogue(read_yaml(path), thresholds or default_thresholds(), path.name)


@cache
def default_catalogue() -> Catalogue:
    """The shipped catalogue, read once on first use."""
    return load_catalogue()
