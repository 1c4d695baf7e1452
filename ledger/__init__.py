"""The ledger: the system of record for sites, nodes, devices and the caps they count against.

Layout (imperative shell around pure folds):
    settings   configuration from flags and GPUCAP_* variables
    tables     SQLModel tables; `migrations/` holds the Alembic scripts that create them
    store      engines, write transactions (one writer at a time), migration on start
    eventlog   the hash-chained event log: canonical encoding, append, verify (pure walk)
    fold       pure: a report or decommission applied to a node's devices -> row and line deltas
    ingest     the write paths: reports, registry changes, decommissions, rebuild
    tokens     HMAC bearer tokens: issue, verify, revoke
    views      pure: the Fleet the engine sees, scope filters, what-if
    reconcile  reconciliation findings
    app        the FastAPI application (`create_app(settings)`)
    cli        `gpucap ledger ...`, `gpucap headroom`, `gpucap whatif`
    listings   `gpucap ledger nodes` and `token --list` rows as a table, JSON or CSV
"""
