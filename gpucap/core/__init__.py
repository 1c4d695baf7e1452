"""The pure compliance core: catalogue, classification, rule packs, fleets and the cap engine.

Nothing here does I/O except the loaders in `data`, which read the files shipped in the package
(or a path the caller names). `as_of` is always an argument.
"""
