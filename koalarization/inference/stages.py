"""How long each stage of colorizing takes: `benchmark-colorize` reads it (bench/latency.py).

    with timed_stages() as seconds: ...   ->  seconds fills with {stage: seconds} of the calls in the block
"""

from __future__ import annotations

import contextlib
import contextvars
import time

# Seconds per stage of the calls made inside `timed_stages()` (benchmark-colorize reads them); None outside.
_stage_seconds: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("stages", default=None)


@contextlib.contextmanager
def timed_stages():
    """Collect how long each stage of colorizing takes in this thread: yields a dict that fills with
    {stage: seconds} ("lab", "network", "upsample", "pixels"), summed over the calls made in the block."""
    seconds: dict[str, float] = {}
    token = _stage_seconds.set(seconds)
    try:
        yield seconds
    finally:
        _stage_seconds.reset(token)


@contextlib.contextmanager
def stage(name: str):
    """Add the time the block takes to `name`'s seconds of the enclosing timed_stages(), if any."""
    seconds, start = _stage_seconds.get(), time.perf_counter()
    try:
        yield
    finally:
        if seconds is not None:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
