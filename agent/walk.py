"""Walking NVML: one algorithm over an NVML-shaped call surface, shared by both backends.

`NvmlCalls` is the narrow surface a backend must provide: each method is one NVML C function
and raises `NvmlCallError(code)` with the NVML return code on failure. `NvmlSession` owns the
lifecycle (lazy init, shutdown after a lifecycle error, re-init on the next collection) and
classifies every failure in one place:

    NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND, NO_DATA  -> the field is absent (None)
    GPU_IS_LOST                                                -> that device is `lost`
    UNINITIALIZED, DRIVER_NOT_LOADED, LIB_RM_VERSION_MISMATCH,
    LIBRARY_NOT_FOUND                                          -> NVML down: degraded, re-init later
    NOT_FOUND, INVALID_ARGUMENT on a MIG slot                  -> an empty (sparse) slot
    anything else on a device                                  -> that device is `error`

NVML strings are decoded as UTF-8 with U+FFFD for invalid bytes (`nvml_text`): a garbled
serial is reported garbled, not fatal. Any other exception in a collection (a bug, a binding
surprise) makes that one collection a degraded reading naming it; the daemon keeps running.
It runs just past 400 lines: the walk and its one table of failures are read together.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from gpucap.agent.model import (
    ARCHITECTURES,
    STATE_ERROR,
    STATE_LOST,
    STATE_UNSUPPORTED,
    DeviceReading,
    MigReading,
    NodeReading,
)

log = logging.getLogger("gpucap.agent.nvml")

# NVML return codes (nvml.h); the numbers are ABI, identical in pynvml and the C library.
SUCCESS = 0
UNINITIALIZED = 1
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
INSUFFICIENT_SIZE = 7
INSUFFICIENT_POWER = 8
DRIVER_NOT_LOADED = 9
TIMEOUT = 10
LIBRARY_NOT_FOUND = 12
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
RESET_REQUIRED = 16
LIB_RM_VERSION_MISMATCH = 18
NO_DATA = 21
GPU_NOT_FOUND = 28
UNKNOWN = 999

ERROR_NAMES: dict[int, str] = {
    UNINITIALIZED: "UNINITIALIZED",
    INVALID_ARGUMENT: "INVALID_ARGUMENT",
    NOT_SUPPORTED: "NOT_SUPPORTED",
    NO_PERMISSION: "NO_PERMISSION",
    NOT_FOUND: "NOT_FOUND",
    INSUFFICIENT_SIZE: "INSUFFICIENT_SIZE",
    INSUFFICIENT_POWER: "INSUFFICIENT_POWER",
    DRIVER_NOT_LOADED: "DRIVER_NOT_LOADED",
    TIMEOUT: "TIMEOUT",
    LIBRARY_NOT_FOUND: "LIBRARY_NOT_FOUND",
    FUNCTION_NOT_FOUND: "FUNCTION_NOT_FOUND",
    GPU_IS_LOST: "GPU_IS_LOST",
    RESET_REQUIRED: "RESET_REQUIRED",
    LIB_RM_VERSION_MISMATCH: "LIB_RM_VERSION_MISMATCH",
    NO_DATA: "NO_DATA",
    GPU_NOT_FOUND: "GPU_NOT_FOUND",
    UNKNOWN: "UNKNOWN",
}
ERROR_CODES: dict[str, int] = {v.lower(): k for k, v in ERROR_NAMES.items()}

_ABSENT = frozenset({NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND, NO_DATA})
_LIFECYCLE = frozenset(
    {UNINITIALIZED, DRIVER_NOT_LOADED, LIB_RM_VERSION_MISMATCH, LIBRARY_NOT_FOUND}
)
_EMPTY_SLOT = frozenset({NOT_FOUND, INVALID_ARGUMENT})
# Strings some drivers return instead of NOT_SUPPORTED.
_PLACEHOLDERS = frozenset({"", "[N/A]", "N/A", "[Not Supported]", "Not Supported"})

# NVML_INIT_FLAG_NO_GPUS: a node with no GPU (or all GPUs failing) still initialises.
INIT_FLAG_NO_GPUS = 1

T = TypeVar("T")


def error_name(code: int) -> str:
    return "NVML_ERROR_" + ERROR_NAMES.get(code, f"CODE_{code}")


def nvml_text(value: object) -> str:
    """An NVML string as text; invalid UTF-8 (a garbled serial) becomes U+FFFD, never an error."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


class NvmlCallError(Exception):
    """One NVML call returned `code` (an NVML_ERROR_* value)."""

    def __init__(self, call: str, code: int) -> None:
        self.call = call
        self.code = code
        super().__init__(f"{call}: {error_name(code)}")


@dataclass(frozen=True)
class PciIds:
    """nvmlPciInfo_t, unpacked: `device_id` and `vendor_id` come from pciDeviceId."""

    bus_id: str
    vendor_id: int
    device_id: int
    subsystem_id: int


class NvmlCalls(Protocol):
    """The NVML C functions the agent uses; each raises NvmlCallError on a non-zero return."""

    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def driver_version(self) -> str: ...
    def cuda_driver_version(self) -> int: ...
    def device_count(self) -> int: ...
    def handle_by_index(self, index: int) -> object: ...
    def name(self, handle: object) -> str: ...
    def uuid(self, handle: object) -> str: ...
    def serial(self, handle: object) -> str: ...
    def board_part_number(self, handle: object) -> str: ...
    def pci_info(self, handle: object) -> PciIds: ...
    def architecture(self, handle: object) -> int: ...
    def memory_total_bytes(self, handle: object) -> int: ...
    def mig_mode(self, handle: object) -> tuple[int, int]: ...
    def max_mig_device_count(self, handle: object) -> int: ...
    def mig_device_handle(self, handle: object, index: int) -> object: ...
    def gpu_instance_id(self, handle: object) -> int: ...
    def compute_instance_id(self, handle: object) -> int: ...


class _NvmlDownError(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class _DeviceFailedError(Exception):
    def __init__(self, state: str, reason: str) -> None:
        self.state = state
        self.reason = reason
        super().__init__(reason)


class NvmlSession:
    """A long-lived NVML session that never raises: every collection returns a NodeReading."""

    def __init__(self, calls: NvmlCalls) -> None:
        self._calls = calls
        self._up = False
        self._warned: set[str] = set()
        self.current_call = ""  # the NVML call in progress, named when a call hangs

    def read(self) -> NodeReading:
        """Collect the node once; NVML being unavailable gives nvml_up False, not an exception."""
        try:
            if not self._up:
                self._guard("nvmlInitWithFlags", self._calls.init)
                self._up = True
                log.info("NVML initialised")
            return self._read_node()
        except _NvmlDownError as down:
            self.close()
            return NodeReading(nvml_up=False, reason=down.reason)

    def close(self) -> None:
        """Shut NVML down (best effort); the next read re-initialises."""
        if self._up:
            self._up = False
            with contextlib.suppress(NvmlCallError):
                self._calls.shutdown()

    def _guard(self, call: str, fn: Callable[[], T]) -> T:
        """Run one NVML call; a lifecycle error anywhere means NVML is down."""
        self.current_call = call
        try:
            result = fn()
        except NvmlCallError as exc:
            self.current_call = ""
            if exc.code in _LIFECYCLE:
                raise _NvmlDownError(f"{call}: {error_name(exc.code)}") from exc
            raise
        # Any other exception leaves `current_call` set, so the reader can name the call.
        self.current_call = ""
        return result

    def _field(self, call: str, fn: Callable[[], T]) -> T | None:
        """A per-device field: absent when unsupported; a lost GPU fails the whole device."""
        try:
            value = self._guard(call, fn)
        except NvmlCallError as exc:
            if exc.code in _ABSENT:
                if exc.code == FUNCTION_NOT_FOUND and call not in self._warned:
                    self._warned.add(call)
                    log.warning("%s is missing from this driver's NVML; field left absent", call)
                return None
            if exc.code == GPU_IS_LOST:
                raise _DeviceFailedError(STATE_LOST, error_name(exc.code)) from exc
            raise _DeviceFailedError(STATE_ERROR, f"{call}: {error_name(exc.code)}") from exc
        if isinstance(value, str) and value.strip() in _PLACEHOLDERS:
            return None
        return value

    def _read_node(self) -> NodeReading:
        calls = self._calls
        try:
            driver: str | None = self._guard("nvmlSystemGetDriverVersion", calls.driver_version)
        except NvmlCallError:
            driver = None
        try:
            cuda: int | None = self._guard(
                "nvmlSystemGetCudaDriverVersion_v2", calls.cuda_driver_version
            )
        except NvmlCallError:
            cuda = None
        try:
            count = self._guard("nvmlDeviceGetCount_v2", calls.device_count)
        except NvmlCallError as exc:
            raise _NvmlDownError(f"nvmlDeviceGetCount_v2: {error_name(exc.code)}") from exc
        devices = tuple(self._read_device(i) for i in range(count))
        return NodeReading(
            nvml_up=True, driver_version=driver, cuda_driver_version=cuda, devices=devices
        )

    def _read_device(self, index: int) -> DeviceReading:
        calls = self._calls
        try:
            handle = self._guard(
                "nvmlDeviceGetHandleByIndex_v2", lambda: calls.handle_by_index(index)
            )
        except NvmlCallError as exc:
            state = STATE_LOST if exc.code == GPU_IS_LOST else STATE_UNSUPPORTED
            if exc.code not in _ABSENT and exc.code not in (GPU_IS_LOST, INSUFFICIENT_POWER):
                state = STATE_ERROR
            return _blank(index, state, error_name(exc.code))
        partial: dict[str, object] = {}
        try:
            partial["uuid"] = self._field("nvmlDeviceGetUUID", lambda: calls.uuid(handle))
            partial["name"] = self._field("nvmlDeviceGetName", lambda: calls.name(handle))
            pci = self._field("nvmlDeviceGetPciInfo_v3", lambda: calls.pci_info(handle))
            partial["pci"] = pci
            partial["serial"] = self._field("nvmlDeviceGetSerial", lambda: calls.serial(handle))
            partial["board_part_number"] = self._field(
                "nvmlDeviceGetBoardPartNumber", lambda: calls.board_part_number(handle)
            )
            arch = self._field("nvmlDeviceGetArchitecture", lambda: calls.architecture(handle))
            partial["architecture"] = None if arch is None else ARCHITECTURES.get(arch, "unknown")
            partial["memory_total_bytes"] = self._field(
                "nvmlDeviceGetMemoryInfo", lambda: calls.memory_total_bytes(handle)
            )
            mode = self._field("nvmlDeviceGetMigMode", lambda: calls.mig_mode(handle))
            mig_enabled = None if mode is None else mode[0] == 1
            partial["mig_enabled"] = mig_enabled
            mig = self._read_mig(handle) if mig_enabled else ()
        except _DeviceFailedError as failed:
            return _device(index, partial, state=failed.state, reason=failed.reason)
        return _device(index, partial, mig=mig)

    def _read_mig(self, parent: object) -> tuple[MigReading, ...]:
        calls = self._calls
        count = self._field(
            "nvmlDeviceGetMaxMigDeviceCount", lambda: calls.max_mig_device_count(parent)
        )
        slices: list[MigReading] = []
        for i in range(count or 0):
            try:
                handle = self._guard(
                    "nvmlDeviceGetMigDeviceHandleByIndex",
                    lambda i=i: calls.mig_device_handle(parent, i),  # type: ignore[misc]
                )
            except NvmlCallError as exc:
                if exc.code in _EMPTY_SLOT:
                    continue  # sparse layout: an empty slot, later slots may still be populated
                if exc.code == GPU_IS_LOST:
                    raise _DeviceFailedError(STATE_LOST, error_name(exc.code)) from exc
                continue
            slices.append(
                MigReading(
                    index=i,
                    uuid=self._field("nvmlDeviceGetUUID", lambda h=handle: calls.uuid(h)),  # type: ignore[misc]
                    gpu_instance_id=self._field(
                        "nvmlDeviceGetGpuInstanceId",
                        lambda h=handle: calls.gpu_instance_id(h),  # type: ignore[misc]
                    ),
                    compute_instance_id=self._field(
                        "nvmlDeviceGetComputeInstanceId",
                        lambda h=handle: calls.compute_instance_id(h),  # type: ignore[misc]
                    ),
                    memory_total_bytes=self._field(
                        "nvmlDeviceGetMemoryInfo",
                        lambda h=handle: calls.memory_total_bytes(h),  # type: ignore[misc]
                    ),
                )
            )
        return tuple(slices)


def _blank(index: int, state: str, reason: str) -> DeviceReading:
    return _device(index, {}, state=state, reason=reason)


def _device(
    index: int,
    fields: dict[str, object],
    *,
    state: str = "ok",
    reason: str | None = None,
    mig: tuple[MigReading, ...] = (),
) -> DeviceReading:
    pci = fields.get("pci")
    assert pci is None or isinstance(pci, PciIds)

    def text(key: str) -> str | None:
        value = fields.get(key)
        return value if isinstance(value, str) else None

    memory = fields.get("memory_total_bytes")
    mig_enabled = fields.get("mig_enabled")
    return DeviceReading(
        index=index,
        uuid=text("uuid"),
        name=text("name"),
        serial=text("serial"),
        board_part_number=text("board_part_number"),
        pci_bus_id=pci.bus_id if pci else None,
        pci_vendor_id=pci.vendor_id if pci else None,
        pci_device_id=pci.device_id if pci else None,
        pci_subsystem_id=pci.subsystem_id if pci else None,
        architecture=text("architecture"),
        memory_total_bytes=memory if isinstance(memory, int) else None,
        mig_enabled=mig_enabled if isinstance(mig_enabled, bool) else None,
        state=state,
        reason=reason,
        mig=mig,
    )


class BoundedReader:
    """Runs each collection in a worker thread with a deadline: a hung NVML call cannot be
    interrupted, so the worker is left behind and the agent reports NVML as down until that
    call returns; then the session is torn down and re-initialised."""

    def __init__(self, session: NvmlSession, timeout_seconds: float) -> None:
        self._session = session
        self._timeout_seconds = timeout_seconds
        self._hung: threading.Thread | None = None
        self._hung_call = ""

    def read(self) -> NodeReading:
        if self._hung is not None:
            if self._hung.is_alive():
                return NodeReading(
                    nvml_up=False, reason=f"{self._hung_call}: still hung from an earlier call"
                )
            self._hung = None
            log.warning("hung NVML call %s returned; re-initialising NVML", self._hung_call)
            self._session.close()
        box: list[NodeReading] = []
        worker = threading.Thread(
            target=lambda: box.append(self._collect()), name="gpucap-nvml", daemon=True
        )
        worker.start()
        worker.join(self._timeout_seconds)
        if worker.is_alive():
            self._hung = worker
            self._hung_call = self._session.current_call or "NVML"
            reason = f"{self._hung_call}: no answer within {self._timeout_seconds:g} s"
            log.error("NVML call hung, agent degraded: %s", reason)
            return NodeReading(nvml_up=False, reason=reason)
        return box[0]

    def _collect(self) -> NodeReading:
        """The worker's body: one collection, never an exception (the thread must answer)."""
        try:
            return self._session.read()
        except Exception as exc:
            call = self._session.current_call or "NVML collection"
            self._session.current_call = ""
            log.debug("unexpected error in %s", call, exc_info=True)
            return NodeReading(
                nvml_up=False, reason=f"{call}: unexpected {type(exc).__name__}: {exc}"
            )

    def close(self) -> None:
        if self._hung is None:
            self._session.close()
