"""Writing files so that a kill never leaves half of one, and errors told in one line.

    atomic_path(path) -> context manager yielding a temporary path beside `path`: write there; on success
                         it is flushed to disk and renamed over `path`, on failure removed
    write_text_atomic(path, text)
    cache_dir()       -> the folder for what koalarization can rebuild (converted weights, training caches)
    first_line(err)   -> the first line of an exception's message (its type name when it has none)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yield a temporary name beside `path` (ending in `suffix`, for writers that choose the format by
    extension) for a file or a folder; rename it over `path` once the block succeeds (a folder `path` is
    replaced whole). A reader sees the old one or the new one, never a partial one, and a machine that
    loses power does not come back with a renamed, empty file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")


def cache_dir() -> Path:
    """Where koalarization keeps what it can rebuild (converted weights, training caches):
    ``$KOALARIZATION_CACHE``, else ``$XDG_CACHE_HOME/koalarization``, else ``~/.cache/koalarization``."""
    if os.environ.get("KOALARIZATION_CACHE"):
        return Path(os.environ["KOALARIZATION_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "koalarization"


def first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__
