"""Sanity checks for a pretrained embedder: ImageNet accuracy on a folder of labelled photos, and speed.

A wrong weight layout or preprocessing usually still gives confident-looking softmax outputs, so the
only convincing check is accuracy on real photos: EfficientNet-Lite0 gets top-1 ~0.90 on the first
250 photos of an ImageNet sample with one photo per class (docs/reference.md), a broken port gets ~0.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from koalarization.config import EMBEDDER_CHECK_LIMIT, in_range
from koalarization.errors import KoalarizationError

# Standard ImageNet evaluation: resize the shorter side to R / 0.875 (256 for R = 224), crop R.
CROP_FRACTION = 0.875


def load_eval_image(path: str | Path, resolution: int) -> np.ndarray:
    """Decode, shorter side -> resolution / 0.875 (bicubic), centre crop -> (R, R, 3) float32 in [0, 255]."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        short = round(resolution / CROP_FRACTION)
        scale = short / min(im.size)
        w, h = max(resolution, round(im.width * scale)), max(resolution, round(im.height * scale))
        im = im.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - resolution) // 2, (h - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
        return np.asarray(im, dtype=np.float32)


def labelled_photos(data_dir: str | Path) -> tuple[list[Path], np.ndarray]:
    """Photos named ``nXXXXXXXX_label.JPEG``, sorted by name, and their ImageNet class indices.

    The class index is the rank of the WordNet id among the 1000 distinct ids of the folder (sorted
    WordNet ids are the standard class order), so the folder must contain all 1000 classes.
    """
    folder = Path(data_dir)
    if not folder.is_dir():
        raise KoalarizationError(f"data {folder}: not a folder")
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in (".jpeg", ".jpg", ".png") and p.name.startswith("n"))
    wnids = sorted({p.name.split("_", 1)[0] for p in files})
    if len(wnids) != 1000:
        raise KoalarizationError(
            f"data {folder}: found {len(wnids)} distinct WordNet ids in file names (nXXXXXXXX_label.JPEG), "
            "need all 1000 ImageNet classes to know each class index")
    index = {w: i for i, w in enumerate(wnids)}
    return files, np.array([index[p.name.split("_", 1)[0]] for p in files])


def imagenet_top1(name: str, data_dir: str | Path, limit: int = EMBEDDER_CHECK_LIMIT, batch_size: int = 25,
                  weights="auto") -> dict:
    """Classify the first ``limit`` photos of ``data_dir``; return top-1/top-5 accuracy and speed.

    Returns ``{"name", "n_images", "top1", "top5", "seconds_per_image"}``; the time covers decoding
    and the forward pass (model building and weight loading excluded).
    """
    from tqdm import tqdm

    from koalarization.model.efficientnet_lite import VARIANTS, build_efficientnet_lite

    in_range("limit", limit, at_least=1)
    files, labels = labelled_photos(data_dir)
    files, labels = files[:limit], labels[:limit]
    if not files:
        raise KoalarizationError(f"data {data_dir}: no photos to classify")
    model = build_efficientnet_lite(name, weights=weights)
    res = VARIANTS[name]["resolution"]
    top1 = top5 = 0
    start = time.perf_counter()
    with tqdm(total=len(files), desc=f"{name} on {Path(data_dir).name}", unit="img") as bar:
        for i in range(0, len(files), batch_size):
            batch = np.stack([load_eval_image(p, res) for p in files[i:i + batch_size]])
            probs = np.asarray(model.predict_on_batch(batch))
            best5 = np.argsort(-probs, axis=1)[:, :5]
            truth = labels[i:i + batch_size, None]
            top1 += int((best5[:, :1] == truth).sum())
            top5 += int((best5 == truth).any(axis=1).sum())
            bar.update(len(batch))
            bar.set_postfix(top1=f"{top1 / bar.n:.3f}")
    seconds = time.perf_counter() - start
    n = len(files)
    return {"name": name, "n_images": n, "top1": top1 / n, "top5": top5 / n, "seconds_per_image": seconds / n}
