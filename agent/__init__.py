"""The gpucap node agent: NVML inventory, a fake NVML for tests, and the reporting daemon.

Nothing here touches NVML, the network or the disk at import time; the CLI handlers in
`gpucap.agent.cli` build everything from their arguments.
"""
