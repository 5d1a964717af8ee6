"""The train / val / test split of a run's photos, saved as split.json beside its weights.

Made once with scikit-learn (seeded; the reference fractions 0.7225 / 0.1275 / 0.15) and reused when a run
resumes, so `test` always sees photos the run never trained or chose on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from koalarization.errors import KoalarizationError
from koalarization.files import write_text_atomic


@dataclass(frozen=True)
class Split:
    """A run's photos: `root` holds them all (split.json stores paths relative to it); `sources` are the
    folders and list files they were found in (what `test --data` is compared with)."""

    root: Path
    train: tuple[Path, ...]
    val: tuple[Path, ...]
    test: tuple[Path, ...]
    sources: tuple[str, ...] = ()

    def save(self, path: Path, **extra) -> None:
        rel = lambda files: [f.relative_to(self.root).as_posix() for f in files]  # noqa: E731
        body = {"root": str(self.root), "sources": list(self.sources),
                "train": rel(self.train), "val": rel(self.val), "test": rel(self.test)}
        write_text_atomic(path, json.dumps({**body, **extra}, indent=1))

    def belongs_to(self, data: str | Path) -> bool:
        """True when `data` is one of the folders this split was made of (normalised: "../data" ==
        "/abs/data"), or the root of all its photos."""
        data = Path(os.path.abspath(data))
        return data == self.root or data in {Path(s) for s in self.sources}

    @classmethod
    def load(cls, path: Path) -> "Split":
        try:
            raw = json.loads(Path(path).read_text())
            root = Path(raw["root"])
            parts = (tuple(root / f for f in raw[k]) for k in ("train", "val", "test"))
            return cls(root, *parts, sources=tuple(raw.get("sources", ())))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise KoalarizationError(f"{path}: unreadable split file ({err}); delete it to make a new split") from None


def make_split(files: list[Path], val_fraction: float, test_fraction: float, seed: int, sources=()) -> Split:
    """Deterministic train/val/test split (reference fractions 0.7225 / 0.1275 / 0.15) with scikit-learn.
    `sources`: the folders and list files the photos came from, recorded in the split."""
    from sklearn.model_selection import train_test_split

    from koalarization.data.sources import common_root

    if len(files) < 3:
        raise KoalarizationError(
            f"found {len(files)} usable colour photo(s); training needs at least 3 (train, val, test)"
        )
    # abspath, not resolve: a symlinked photo stays inside the root, so the split can store relative paths.
    files = sorted(Path(os.path.abspath(f)) for f in files)
    rest, test = train_test_split(files, test_size=test_fraction, random_state=seed)
    # val_fraction is of the whole set; of what remains after the test split it is a larger share.
    train, val = train_test_split(rest, test_size=val_fraction / (1.0 - test_fraction), random_state=seed)
    sources = tuple(os.path.abspath(s) for s in sources)
    return Split(common_root(files), tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)), sources)
