# ruff: noqa: N802 -- the stand-in methods carry the NVML C function names pynvml looks up
"""A stand-in for the loaded NVML C library, so the real pynvml code runs without a GPU.

pynvml keeps the loaded `CDLL("libnvidia-ml.so.1")` in its module global `nvmlLib` and looks
each C function up with `getattr(nvmlLib, "nvmlDeviceGetName")`. `FakeLibNvml` sits exactly
there: attribute lookups return C-function stand-ins that receive the very ctypes objects pynvml
builds (c_uint values, `byref(...)` out-parameters, string buffers, nvmlPciInfo_t and
nvmlMemory_t structs, nvmlDevice_t handles), write their answers through them and return NVML
return codes. pynvml's Python wrappers are never patched, so its marshalling is what is tested.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from gpucap.agent import walk
from gpucap.agent.fake_machine import FakeMachine

_CFn = Callable[..., int]


class _CFunction:
    """One C function: callable like a ctypes function pointer, with restype/argtypes slots."""

    def __init__(self, name: str, impl: Callable[..., Any]) -> None:
        self.__name__ = name
        self.restype: Any = ctypes.c_int
        self.argtypes: Any = None
        self._impl = impl

    def __call__(self, *args: Any) -> Any:
        return self._impl(*args)


def _out(arg: Any) -> Any:
    """The ctypes object behind a `byref(x)` (or a pointer) argument."""
    return arg._obj if hasattr(arg, "_obj") else arg.contents


def _value(arg: Any) -> int:
    return int(arg.value) if hasattr(arg, "value") else int(arg)


def _handle_in(arg: Any) -> int:
    """An nvmlDevice_t (an opaque pointer) as the machine's int handle."""
    return ctypes.cast(arg, ctypes.c_void_p).value or 0


def _handle_out(arg: Any, handle: int) -> None:
    slot = ctypes.cast(ctypes.pointer(_out(arg)), ctypes.POINTER(ctypes.c_void_p))
    slot.contents.value = handle


def _fill(buffer: Any, size: Any, text: str | bytes) -> int:
    data = text if isinstance(text, bytes) else text.encode()  # bytes: raw, maybe invalid UTF-8
    if len(data) + 1 > _value(size):
        return walk.INSUFFICIENT_SIZE
    buffer.value = data
    return walk.SUCCESS


class FakeLibNvml:
    """The NVML C ABI subset the agent uses, answered by a FakeMachine."""

    def __init__(self, machine: FakeMachine) -> None:
        self.machine = machine
        self._functions: dict[str, _CFunction] = {}

    def __getattr__(self, name: str) -> _CFunction:
        if name.startswith("_"):
            raise AttributeError(name)
        impl = getattr(self, f"_c_{name}", None)
        if impl is None:
            raise AttributeError(name)  # pynvml turns this into NVML_ERROR_FUNCTION_NOT_FOUND
        functions = self.__dict__["_functions"]
        if name not in functions:
            functions[name] = _CFunction(name, impl)
        fn: _CFunction = functions[name]
        return fn

    # --- system ---------------------------------------------------------------------------
    def _c_nvmlInitWithFlags(self, flags: Any) -> int:
        return self.machine.init()

    def _c_nvmlInit_v2(self) -> int:
        return self.machine.init()

    def _c_nvmlShutdown(self) -> int:
        return self.machine.shutdown()

    def _c_nvmlErrorString(self, result: Any) -> bytes:
        return walk.error_name(_value(result)).encode()

    def _c_nvmlSystemGetDriverVersion(self, buffer: Any, size: Any) -> int:
        code, version = self.machine.get_driver_version()
        return code or _fill(buffer, size, version)

    def _c_nvmlSystemGetCudaDriverVersion_v2(self, out: Any) -> int:
        code, version = self.machine.get_cuda_driver_version()
        if not code:
            _out(out).value = version
        return code

    def _c_nvmlDeviceGetCount_v2(self, out: Any) -> int:
        code, count = self.machine.device_count()
        if not code:
            _out(out).value = count
        return code

    def _c_nvmlDeviceGetHandleByIndex_v2(self, index: Any, out: Any) -> int:
        code, handle = self.machine.handle_by_index(_value(index))
        if not code:
            _handle_out(out, handle)
        return code

    # --- device identity ------------------------------------------------------------------
    def _string(self, handle: Any, buffer: Any, size: Any, field: str, call: str) -> int:
        code, value = self.machine.get(_handle_in(handle), field, call)
        return code or _fill(buffer, size, value if isinstance(value, bytes) else str(value))

    def _c_nvmlDeviceGetName(self, handle: Any, buffer: Any, size: Any) -> int:
        return self._string(handle, buffer, size, "name", "nvmlDeviceGetName")

    def _c_nvmlDeviceGetUUID(self, handle: Any, buffer: Any, size: Any) -> int:
        return self._string(handle, buffer, size, "uuid", "nvmlDeviceGetUUID")

    def _c_nvmlDeviceGetSerial(self, handle: Any, buffer: Any, size: Any) -> int:
        return self._string(handle, buffer, size, "serial", "nvmlDeviceGetSerial")

    def _c_nvmlDeviceGetBoardPartNumber(self, handle: Any, buffer: Any, size: Any) -> int:
        return self._string(
            handle, buffer, size, "board_part_number", "nvmlDeviceGetBoardPartNumber"
        )

    def _c_nvmlDeviceGetPciInfo_v3(self, handle: Any, out: Any) -> int:
        code, pci = self.machine.get(_handle_in(handle), "pci", "nvmlDeviceGetPciInfo_v3")
        if code:
            return code
        assert isinstance(pci, walk.PciIds)
        info = _out(out)
        bus = pci.bus_id.encode()
        info.busId = bus
        info.busIdLegacy = bus[-12:] if len(bus) > 12 else bus  # 4-digit-domain form
        parts = pci.bus_id.replace(".", ":").split(":")
        info.domain, info.bus, info.device = (int(p, 16) for p in parts[:3])
        # pciDeviceId packs the device id in the high 16 bits and the vendor id in the low.
        info.pciDeviceId = (pci.device_id << 16) | pci.vendor_id
        info.pciSubSystemId = pci.subsystem_id
        return walk.SUCCESS

    def _uint(self, handle: Any, out: Any, field: str, call: str) -> int:
        code, value = self.machine.get(_handle_in(handle), field, call)
        if not code:
            _out(out).value = value
        return code

    def _c_nvmlDeviceGetArchitecture(self, handle: Any, out: Any) -> int:
        return self._uint(handle, out, "architecture", "nvmlDeviceGetArchitecture")

    def _c_nvmlDeviceGetMemoryInfo(self, handle: Any, out: Any) -> int:
        code, total = self.machine.get(
            _handle_in(handle), "memory_total_bytes", "nvmlDeviceGetMemoryInfo"
        )
        if not code:
            memory = _out(out)
            memory.total, memory.used, memory.free = total, 0, total
        return code

    def _c_nvmlDeviceGetMemoryInfo_v2(self, handle: Any, out: Any) -> int:
        return self._c_nvmlDeviceGetMemoryInfo(handle, out)

    def _c_nvmlDeviceGetMigMode(self, handle: Any, current: Any, pending: Any) -> int:
        code, mode = self.machine.get(_handle_in(handle), "mig_mode", "nvmlDeviceGetMigMode")
        if not code:
            assert isinstance(mode, tuple)
            _out(current).value, _out(pending).value = mode
        return code

    def _c_nvmlDeviceGetMaxMigDeviceCount(self, handle: Any, out: Any) -> int:
        return self._uint(handle, out, "max_mig_devices", "nvmlDeviceGetMaxMigDeviceCount")

    def _c_nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: Any, out: Any) -> int:
        code, mig = self.machine.mig_handle(_handle_in(handle), _value(index))
        if not code:
            _handle_out(out, mig)
        return code

    def _c_nvmlDeviceGetGpuInstanceId(self, handle: Any, out: Any) -> int:
        return self._uint(handle, out, "gpu_instance_id", "nvmlDeviceGetGpuInstanceId")

    def _c_nvmlDeviceGetComputeInstanceId(self, handle: Any, out: Any) -> int:
        return self._uint(handle, out, "compute_instance_id", "nvmlDeviceGetComputeInstanceId")
