"""Errors of the exporters.

    GpucapError                 (gpucap.core.errors)
    └── ExporterError
        └── MetricsServerError  the metrics endpoint could not be served (port taken, bad address)

`path` names the setting at fault (``metrics.port``) so the CLI prints one actionable line.
"""

from __future__ import annotations

from gpucap.core.errors import GpucapError


class ExporterError(GpucapError):
    """Base of every error the exporters raise on purpose."""


class MetricsServerError(ExporterError):
    """The metrics HTTP server could not start; an operational failure (CLI exit 3)."""
