"""The fake backend: the shared NVML walk over a scenario's FakeMachine, without pynvml."""

from __future__ import annotations

from gpucap.agent.fake_machine import FakeMachine
from gpucap.agent.model import NodeReading
from gpucap.agent.walk import BoundedReader, NvmlCallError, NvmlSession, PciIds, nvml_text


class FakeCalls:
    """NvmlCalls answered by a FakeMachine; handles are the machine's ints."""

    def __init__(self, machine: FakeMachine) -> None:
        self.machine = machine

    @staticmethod
    def _ok(call: str, code: int) -> None:
        if code:
            raise NvmlCallError(call, code)

    def _get(self, handle: object, field: str, call: str) -> object:
        assert isinstance(handle, int)
        code, value = self.machine.get(handle, field, call)
        self._ok(call, code)
        return value

    def _int(self, handle: object, field: str, call: str) -> int:
        value = self._get(handle, field, call)
        assert isinstance(value, int)
        return value

    def init(self) -> None:
        self._ok("nvmlInitWithFlags", self.machine.init())

    def shutdown(self) -> None:
        self._ok("nvmlShutdown", self.machine.shutdown())

    def driver_version(self) -> str:
        code, value = self.machine.get_driver_version()
        self._ok("nvmlSystemGetDriverVersion", code)
        return value

    def cuda_driver_version(self) -> int:
        code, value = self.machine.get_cuda_driver_version()
        self._ok("nvmlSystemGetCudaDriverVersion_v2", code)
        return value

    def device_count(self) -> int:
        code, value = self.machine.device_count()
        self._ok("nvmlDeviceGetCount_v2", code)
        return value

    def handle_by_index(self, index: int) -> object:
        code, value = self.machine.handle_by_index(index)
        self._ok("nvmlDeviceGetHandleByIndex_v2", code)
        return value

    # Strings may be raw bytes in a scenario (invalid UTF-8); decoded as the real backend does.
    def name(self, handle: object) -> str:
        return nvml_text(self._get(handle, "name", "nvmlDeviceGetName"))

    def uuid(self, handle: object) -> str:
        return nvml_text(self._get(handle, "uuid", "nvmlDeviceGetUUID"))

    def serial(self, handle: object) -> str:
        return nvml_text(self._get(handle, "serial", "nvmlDeviceGetSerial"))

    def board_part_number(self, handle: object) -> str:
        return nvml_text(self._get(handle, "board_part_number", "nvmlDeviceGetBoardPartNumber"))

    def pci_info(self, handle: object) -> PciIds:
        value = self._get(handle, "pci", "nvmlDeviceGetPciInfo_v3")
        assert isinstance(value, PciIds)
        return value

    def architecture(self, handle: object) -> int:
        return self._int(handle, "architecture", "nvmlDeviceGetArchitecture")

    def memory_total_bytes(self, handle: object) -> int:
        return self._int(handle, "memory_total_bytes", "nvmlDeviceGetMemoryInfo")

    def mig_mode(self, handle: object) -> tuple[int, int]:
        value = self._get(handle, "mig_mode", "nvmlDeviceGetMigMode")
        assert isinstance(value, tuple)
        return int(value[0]), int(value[1])

    def max_mig_device_count(self, handle: object) -> int:
        return self._int(handle, "max_mig_devices", "nvmlDeviceGetMaxMigDeviceCount")

    def mig_device_handle(self, handle: object, index: int) -> object:
        assert isinstance(handle, int)
        code, value = self.machine.mig_handle(handle, index)
        self._ok("nvmlDeviceGetMigDeviceHandleByIndex", code)
        return value

    def gpu_instance_id(self, handle: object) -> int:
        return self._int(handle, "gpu_instance_id", "nvmlDeviceGetGpuInstanceId")

    def compute_instance_id(self, handle: object) -> int:
        return self._int(handle, "compute_instance_id", "nvmlDeviceGetComputeInstanceId")


class FakeBackend:
    """NvmlBackend over a scenario, with the same session and deadline as the real one."""

    def __init__(self, machine: FakeMachine, *, timeout_seconds: float = 10.0) -> None:
        self.machine = machine
        self._reader = BoundedReader(NvmlSession(FakeCalls(machine)), timeout_seconds)

    def read(self) -> NodeReading:
        return self._reader.read()

    def close(self) -> None:
        self._reader.close()
