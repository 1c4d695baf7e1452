"""gpucap: compute-cap accounting for GPU clusters (node agent, ledger, exporters)."""

__version__ = "0.1.0"
