"""Which photos a command reads: folders, list files and drop lists -> one sorted list of photo paths.

    photo_paths(folders, lists=(), excludes=()) -> [absolute Path, ...]   (sorted, no duplicates)

A list file holds one path per line (a photo or a folder; relative paths are read from the list file's own
folder; blank lines and lines starting with # are ignored). A drop-list line removes every photo whose path
ends with it, whole components compared: a list written relative to a data set's root (as the public data
sets' drop lists are) works wherever the data set lies.
"""

from __future__ import annotations

import os
from pathlib import Path

from koalarization.data import images
from koalarization.errors import KoalarizationError


def read_list(path: str | Path) -> list[str]:
    """The entries of a list file (see the module docstring), as written."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError as err:
        raise KoalarizationError(f"{path}: cannot read the list ({err.strerror or err})") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _absolute(path: str | Path, base: Path | None = None) -> Path:
    path = Path(path).expanduser()
    # abspath, not resolve: a symlinked photo keeps the name it was listed under.
    return Path(os.path.abspath(path if path.is_absolute() or base is None else base / path))


def photo_paths(folders=(), lists=(), excludes=()) -> list[Path]:
    """Every photo under `folders` and in the list files `lists`, minus the drop lists `excludes`."""
    found: set[Path] = set()
    for folder in folders:
        found.update(_absolute(p) for p in images.find_images(folder))
    for list_file in lists:
        base = Path(list_file).parent
        for entry in read_list(list_file):
            found.update(_absolute(p) for p in images.find_images(_absolute(entry, base)))
    dropped = {tuple(Path(line).parts) for list_file in excludes for line in read_list(list_file)}
    if dropped:
        longest = max(len(parts) for parts in dropped)
        found = {p for p in found if not any(p.parts[-n:] in dropped for n in range(1, longest + 1))}
    return sorted(found)


def common_root(paths) -> Path:
    """The deepest folder holding every path (a split stores its photos relative to it)."""
    paths = list(paths)
    if not paths:
        raise KoalarizationError("no photos")
    root = Path(os.path.commonpath([str(p) for p in paths]))
    return root.parent if len(paths) == 1 or root in paths else root
