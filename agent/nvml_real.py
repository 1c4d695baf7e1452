"""The real backend over pynvml (nvidia-ml-py): the only module that imports pynvml.

Every pynvml call goes through `_funnel`, which turns pynvml's exception classes back into the
NVML return code (`NvmlCallError`); the shared `NvmlSession` then classifies it (absent field,
lost device, NVML down). pynvml is imported lazily, so importing this module does nothing.
A `library` argument installs a stand-in for the loaded C library (see `fake_libnvml`) at
pynvml's own load point, which is how CI runs this code without a GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from gpucap.agent.model import NodeReading
from gpucap.agent.walk import (
    INIT_FLAG_NO_GPUS,
    LIBRARY_NOT_FOUND,
    BoundedReader,
    NvmlCallError,
    NvmlSession,
    PciIds,
    nvml_text,
)

_install_lock = threading.Lock()


def _pynvml() -> ModuleType:
    try:
        import pynvml
    except ImportError as exc:  # the binding itself is missing: as good as no library
        raise NvmlCallError("import pynvml", LIBRARY_NOT_FOUND) from exc
    module: ModuleType = pynvml
    return module


def install_library(library: object | None) -> None:
    """Make pynvml use `library` as its loaded NVML (None: load the real one on next init).

    This is pynvml's load point: `nvmlLib` holds the CDLL, and `_nvmlGetFunctionPointer`
    caches function lookups from it, so the cache is emptied with it.
    """
    pynvml: Any = _pynvml()
    with _install_lock, pynvml.libLoadLock:
        if pynvml.nvmlLib is not library:
            pynvml.nvmlLib = library
            pynvml._nvmlGetFunctionPointer_cache.clear()


def _text(value: Any) -> str:
    return nvml_text(value)


class PynvmlCalls:
    """NvmlCalls over pynvml; the funnel is the one place a pynvml function is invoked."""

    def __init__(self, library: object | None = None) -> None:
        self._library = library

    def _funnel(self, name: str, *args: Any) -> Any:
        pynvml = _pynvml()
        fn: Callable[..., Any] = getattr(pynvml, name)
        try:
            return fn(*args)
        except pynvml.NVMLError as exc:
            raise NvmlCallError(name, int(exc.value)) from exc
        except UnicodeDecodeError as exc:
            # pynvml decodes returned strings strictly; the error carries the raw bytes.
            return nvml_text(exc.object)

    def init(self) -> None:
        if self._library is not None:
            install_library(self._library)
        self._funnel("nvmlInitWithFlags", INIT_FLAG_NO_GPUS)

    def shutdown(self) -> None:
        self._funnel("nvmlShutdown")

    def driver_version(self) -> str:
        return _text(self._funnel("nvmlSystemGetDriverVersion"))

    def cuda_driver_version(self) -> int:
        return int(self._funnel("nvmlSystemGetCudaDriverVersion_v2"))

    def device_count(self) -> int:
        return int(self._funnel("nvmlDeviceGetCount"))

    def handle_by_index(self, index: int) -> object:
        return self._funnel("nvmlDeviceGetHandleByIndex", index)

    def name(self, handle: object) -> str:
        return _text(self._funnel("nvmlDeviceGetName", handle))

    def uuid(self, handle: object) -> str:
        return _text(self._funnel("nvmlDeviceGetUUID", handle))

    def serial(self, handle: object) -> str:
        return _text(self._funnel("nvmlDeviceGetSerial", handle))

    def board_part_number(self, handle: object) -> str:
        return _text(self._funnel("nvmlDeviceGetBoardPartNumber", handle))

    def pci_info(self, handle: object) -> PciIds:
        info = self._funnel("nvmlDeviceGetPciInfo", handle)
        packed = int(info.pciDeviceId)
        return PciIds(
            bus_id=_text(info.busId),
            vendor_id=packed & 0xFFFF,
            device_id=packed >> 16,
            subsystem_id=int(info.pciSubSystemId),
        )

    def architecture(self, handle: object) -> int:
        return int(self._funnel("nvmlDeviceGetArchitecture", handle))

    def memory_total_bytes(self, handle: object) -> int:
        return int(self._funnel("nvmlDeviceGetMemoryInfo", handle).total)

    def mig_mode(self, handle: object) -> tuple[int, int]:
        current, pending = self._funnel("nvmlDeviceGetMigMode", handle)
        return int(current), int(pending)

    def max_mig_device_count(self, handle: object) -> int:
        return int(self._funnel("nvmlDeviceGetMaxMigDeviceCount", handle))

    def mig_device_handle(self, handle: object, index: int) -> object:
        return self._funnel("nvmlDeviceGetMigDeviceHandleByIndex", handle, index)

    def gpu_instance_id(self, handle: object) -> int:
        return int(self._funnel("nvmlDeviceGetGpuInstanceId", handle))

    def compute_instance_id(self, handle: object) -> int:
        return int(self._funnel("nvmlDeviceGetComputeInstanceId", handle))


class PynvmlBackend:
    """NvmlBackend over the real pynvml; `library` replaces the C library (tests, benchmark)."""

    def __init__(self, *, timeout_seconds: float = 10.0, library: object | None = None) -> None:
        self.library = library
        self._reader = BoundedReader(NvmlSession(PynvmlCalls(library)), timeout_seconds)

    def read(self) -> NodeReading:
        return self._reader.read()

    def close(self) -> None:
        self._reader.close()
