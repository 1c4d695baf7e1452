"""Errors of the node agent.

    GpucapError                      (gpucap.core.errors)
    ├── InputError
    │   └── ScenarioError            a fake-NVML scenario file is invalid (CLI exit 2)
    │   └── ConfigError              an agent option or GPUCAP_* variable is invalid (exit 2)
    └── AgentError                   an operational failure of the agent (CLI exit 3)
        ├── NvmlUnavailableError          NVML cannot be initialised (no driver, mismatch, hang)
        └── SpoolError               the spool directory cannot be used

NVML errors of single calls never escape the backends: the funnel turns them into absent
fields or per-device states.
"""

from __future__ import annotations

from gpucap.core.errors import GpucapError, InputError


class ScenarioError(InputError):
    """A scenario file for the fake NVML is invalid; `path` names the field."""


class ConfigError(InputError):
    """An agent option (flag, GPUCAP_* variable or config file line) is invalid."""


class AgentError(GpucapError):
    """An operational failure of the agent."""


class NvmlUnavailableError(AgentError):
    """NVML cannot be used right now; the agent keeps running degraded and retries."""


class SpoolError(AgentError):
    """The spool directory cannot be created, written or read."""
