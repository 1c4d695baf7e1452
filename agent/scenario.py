"""Fake-NVML scenario files: the machines and situations the fake NVML reproduces.

A scenario is data (YAML, `gpucap.fake-nvml/v1`): the devices NVML enumerates, with real PCI
ids and NVML names, plus a timeline of events counted in collections (NVML device-count calls):

    events:
    - {after_collections: 3, lose: 5}                       # index 5 falls off the bus
    - {after_collections: 2, unplug: 3}                     # index 3 vanishes from enumeration
    - {after_collections: 4, plug: {index: 3, device: {...}}}
    - {after_collections: 2, driver_reload: {failed_inits: 2, driver_version: "550.90.07"}}
    - {after_collections: 1, hang: {call: nvmlDeviceGetMemoryInfo, index: 1, seconds: 3}}

`serial` and `board_part_number` may be `!!binary` (base64): the raw bytes NVML returns,
for a board whose EEPROM holds invalid UTF-8.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gpucap.agent.errors import ScenarioError
from gpucap.agent.model import ARCHITECTURE_CODES
from gpucap.agent.walk import ERROR_CODES
from gpucap.core.data import read_yaml

SCHEMA = "gpucap.fake-nvml/v1"
_DEVICE_FIELDS = frozenset(
    {
        "uuid",
        "name",
        "serial",
        "board_part_number",
        "pci",
        "architecture",
        "memory_total_bytes",
        "mig_mode",
        "max_mig_devices",
        "mig_devices",
        "errors",
    }
)
_ERRORABLE = frozenset(
    {"handle", "uuid", "name", "serial", "board_part_number", "pci", "architecture"}
    | {"memory_total_bytes", "mig_mode"}
)
_EVENT_KINDS = ("lose", "unplug", "plug", "driver_reload", "hang")


@dataclass(frozen=True)
class FakeMig:
    index: int
    uuid: str
    gpu_instance_id: int
    compute_instance_id: int
    memory_total_bytes: int


@dataclass(frozen=True)
class FakeDevice:
    """One GPU as the fake NVML presents it; None fields answer NOT_SUPPORTED."""

    uuid: str
    name: str
    pci_bus_id: str
    pci_vendor_id: int
    pci_device_id: int
    pci_subsystem_id: int
    serial: str | bytes | None  # bytes: raw, possibly invalid UTF-8 (`!!binary` in YAML)
    board_part_number: str | bytes | None
    architecture: int | None
    memory_total_bytes: int | None
    mig_mode: int | None  # None: MIG not supported; 0 disabled; 1 enabled
    max_mig_devices: int
    mig_devices: tuple[FakeMig, ...]
    errors: tuple[tuple[str, int], ...]  # (field, NVML error code) injected on every call

    def error_for(self, field: str) -> int:
        return next((code for name, code in self.errors if name == field), 0)


@dataclass(frozen=True)
class FakeEvent:
    after_collections: int
    kind: str  # lose | unplug | plug | driver_reload | hang
    index: int = -1
    device: FakeDevice | None = None
    failed_inits: int = 0
    driver_version: str | None = None
    call: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    driver_version: str
    cuda_driver_version: int
    init_error: int  # 0, or the NVML error nvmlInit returns for ever (no driver)
    devices: tuple[FakeDevice, ...]
    events: tuple[FakeEvent, ...]


def shipped_scenarios() -> tuple[str, ...]:
    """Names of the scenarios shipped in the package."""
    folder = resources.files("gpucap.agent").joinpath("scenarios")
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")))


def scenario_path(name_or_path: str) -> Path:
    """A shipped scenario's file, or the named file; InputError if neither exists."""
    if name_or_path in shipped_scenarios():
        return Path(
            str(resources.files("gpucap.agent").joinpath("scenarios", f"{name_or_path}.yaml"))
        )
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ScenarioError(name_or_path, "no such scenario file")
        return path
    known = ", ".join(shipped_scenarios())
    raise ScenarioError("--fake", f"unknown scenario {name_or_path!r}; shipped: {known}")


def load_scenario(name_or_path: str) -> Scenario:
    path = scenario_path(name_or_path)
    return parse_scenario(read_yaml(path, error=ScenarioError), path.stem)


def parse_scenario(doc: Any, name: str) -> Scenario:
    """Validate a parsed scenario document; ScenarioError names the field path."""
    top = _mapping(doc, name)
    if top.get("schema") != SCHEMA:
        raise ScenarioError(f"{name}.schema", f"expected {SCHEMA!r}, got {top.get('schema')!r}")
    init_error = top.get("init_error")
    raw_devices = top.get("devices", [])
    if not isinstance(raw_devices, list):
        raise ScenarioError(f"{name}.devices", "expected a list")
    devices = tuple(_device(d, f"{name}.devices[{i}]") for i, d in enumerate(raw_devices))
    uuids = [d.uuid for d in devices]
    if len(set(uuids)) != len(uuids):
        raise ScenarioError(f"{name}.devices", "device uuids must be unique")
    raw_events = top.get("events", [])
    if not isinstance(raw_events, list):
        raise ScenarioError(f"{name}.events", "expected a list")
    events = tuple(_event(e, f"{name}.events[{i}]") for i, e in enumerate(raw_events))
    cuda = top.get("cuda_driver_version", 12040)
    if not isinstance(cuda, int) or isinstance(cuda, bool):
        raise ScenarioError(f"{name}.cuda_driver_version", "expected an integer like 12040")
    return Scenario(
        name=name,
        description=str(top.get("description", "")),
        driver_version=_text(top, "driver_version", name),
        cuda_driver_version=cuda,
        init_error=0 if init_error is None else _error_code(init_error, f"{name}.init_error"),
        devices=devices,
        events=tuple(sorted(events, key=lambda e: e.after_collections)),
    )


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _text(raw: dict[str, Any], key: str, path: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ScenarioError(f"{path}.{key}", "expected a non-empty string")
    return value


def _optional_text(raw: dict[str, Any], key: str, path: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ScenarioError(f"{path}.{key}", f"expected a string or null, got {value!r}")
    return value


def _optional_raw_text(raw: dict[str, Any], key: str, path: str) -> str | bytes | None:
    """A string field NVML returns as bytes: text, or `!!binary` for bytes that are not UTF-8."""
    value = raw.get(key)
    if isinstance(value, bytes):
        return value
    try:
        return _optional_text(raw, key, path)
    except ScenarioError:
        raise ScenarioError(
            f"{path}.{key}", f"expected a string, !!binary or null, got {value!r}"
        ) from None


def _int(raw: dict[str, Any], key: str, path: str, default: int | None = None) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ScenarioError(f"{path}.{key}", f"expected a non-negative integer, got {value!r}")
    return value


def _hex(raw: dict[str, Any], key: str, path: str) -> int:
    value = raw.get(key)
    if isinstance(value, str):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise ScenarioError(f"{path}.{key}", f"expected a hexadecimal id like '0x2330', got {value!r}")


def _error_code(value: Any, path: str) -> int:
    code = ERROR_CODES.get(str(value).lower())
    if code is None:
        known = ", ".join(sorted(ERROR_CODES))
        raise ScenarioError(path, f"unknown NVML error {value!r}; known: {known}")
    return code


def _device(value: Any, path: str) -> FakeDevice:
    raw = _mapping(value, path)
    unknown = set(raw) - _DEVICE_FIELDS
    if unknown:
        raise ScenarioError(f"{path}.{sorted(unknown)[0]}", "unknown field")
    pci = _mapping(raw.get("pci"), f"{path}.pci")
    arch = raw.get("architecture")
    if arch is not None and arch not in ARCHITECTURE_CODES:
        raise ScenarioError(f"{path}.architecture", f"unknown architecture {arch!r}")
    mig_mode = raw.get("mig_mode")
    if mig_mode not in (None, "enabled", "disabled"):
        raise ScenarioError(f"{path}.mig_mode", "expected enabled, disabled or null")
    memory = raw.get("memory_total_bytes")
    if memory is not None:
        memory = _int(raw, "memory_total_bytes", path)
    migs_raw = raw.get("mig_devices", [])
    if not isinstance(migs_raw, list):
        raise ScenarioError(f"{path}.mig_devices", "expected a list")
    migs = tuple(_mig(m, f"{path}.mig_devices[{i}]") for i, m in enumerate(migs_raw))
    max_mig = _int(raw, "max_mig_devices", path, 7 if mig_mode else 0)
    for i, mig in enumerate(migs):
        if mig.index >= max_mig:
            raise ScenarioError(f"{path}.mig_devices[{i}].index", f"must be below {max_mig}")
    errors_raw = _mapping(raw.get("errors", {}), f"{path}.errors")
    errors = []
    for field, err in errors_raw.items():
        if field not in _ERRORABLE:
            raise ScenarioError(f"{path}.errors.{field}", "not a field that can fail")
        errors.append((str(field), _error_code(err, f"{path}.errors.{field}")))
    return FakeDevice(
        uuid=_text(raw, "uuid", path),
        name=_text(raw, "name", path),
        pci_bus_id=_text(pci, "bus_id", f"{path}.pci"),
        pci_vendor_id=_hex(pci, "vendor_id", f"{path}.pci"),
        pci_device_id=_hex(pci, "device_id", f"{path}.pci"),
        pci_subsystem_id=_hex(pci, "subsystem_id", f"{path}.pci"),
        serial=_optional_raw_text(raw, "serial", path),
        board_part_number=_optional_raw_text(raw, "board_part_number", path),
        architecture=None if arch is None else ARCHITECTURE_CODES[arch],
        memory_total_bytes=memory,
        mig_mode=None if mig_mode is None else int(mig_mode == "enabled"),
        max_mig_devices=max_mig,
        mig_devices=migs,
        errors=tuple(errors),
    )


def _mig(value: Any, path: str) -> FakeMig:
    raw = _mapping(value, path)
    return FakeMig(
        index=_int(raw, "index", path),
        uuid=_text(raw, "uuid", path),
        gpu_instance_id=_int(raw, "gpu_instance_id", path),
        compute_instance_id=_int(raw, "compute_instance_id", path),
        memory_total_bytes=_int(raw, "memory_total_bytes", path),
    )


def _event(value: Any, path: str) -> FakeEvent:
    raw = _mapping(value, path)
    after = _int(raw, "after_collections", path)
    kinds = [k for k in _EVENT_KINDS if k in raw]
    if len(kinds) != 1:
        raise ScenarioError(path, f"expected exactly one of {', '.join(_EVENT_KINDS)}")
    kind = kinds[0]
    if kind in ("lose", "unplug"):
        return FakeEvent(after, kind, index=_int(raw, kind, path))
    body = _mapping(raw[kind], f"{path}.{kind}")
    if kind == "plug":
        device = _device(body.get("device"), f"{path}.plug.device")
        return FakeEvent(after, kind, index=_int(body, "index", f"{path}.plug"), device=device)
    if kind == "driver_reload":
        return FakeEvent(
            after,
            kind,
            failed_inits=_int(body, "failed_inits", f"{path}.driver_reload", 0),
            driver_version=_optional_text(body, "driver_version", f"{path}.driver_reload"),
        )
    seconds = body.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise ScenarioError(f"{path}.hang.seconds", "expected a positive number of seconds")
    return FakeEvent(
        after,
        kind,
        index=_int(body, "index", f"{path}.hang"),
        call=_text(body, "call", f"{path}.hang"),
        seconds=float(seconds),
    )
