"""The pure core: the request contract, values, decisions and rendering; no I/O."""
