"""What a server process does once it has started."""

import gc


def freeze_what_startup_built() -> None:
    """Once a server process has started: what it has built (modules, the app, the engine,
    clients and loops) lives as long as the process, so Python's cycle collector stops
    walking it (`gc.freeze`). Otherwise each full collection walks every object of the
    process with the event loop stopped: ≈ 90 ms here, once in each 15 s of the bench's
    100 jobs/s, which set the notifications' p99 (bench/README.md)."""
    gc.collect()
    gc.freeze()
