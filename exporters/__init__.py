"""Prometheus exporters for the agent and the ledger.

Collectors build fresh metric families per scrape from an in-memory snapshot (`snapshots.py`);
a scrape never calls NVML and never queries the database.
"""
