"""`test`: colorize held-out photos as `colorize` does, write the reference's outputs and measure them honestly.

Every number is measured on what `colorize` writes: the photo at its own resolution, its own L joined with
the predicted ab upsampled to its size, gamut-fitted (colorize.Colorizer). For each photo, writes
    predicted/NAME.png   exactly `colorize`'s output for the photo (same settings)
    bw/NAME.png          the photo's own L, ab = 0 (the gray baseline every number must beat)
    actual/NAME.png      the photo itself
NAME.png is the photo's own name (`outputs.output_names`, as `colorize` names them): a.png and a.tif give
a.png and a-1.png. `metrics.csv` (per photo: the file, its output NAME.png, PSNR and SSIM on RGB against the
photo, colourfulness, the frame statistic, the raw ab accuracy's AuC; the same for the gray baseline and the
photo) grows by a batch of rows as each batch is done, so a run that fails or is killed later keeps the rows
of the photos already written. Then `summary.json` (the means over the photos that have colour; photos that
are gray themselves, by file mode or by content, are listed in metrics.csv and counted as `n_gray_truth`)
and last `grid.png` (bw | predicted | actual rows for a sample, captioned with PSNR). PSNR/SSIM come from
scikit-image; `format_summary` is what `test` prints for people.

Raw accuracy (Zhang et al. 2016, section 3.1): the share of pixels whose ab lies within t of the photo's
(Euclidean, Lab units), averaged over t = 0..150: `auc`, against `gray_auc` for ab = 0.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from tqdm import tqdm

from koalarization import color
from koalarization.config import GRID_ROWS, TEST_BATCH, TEST_OUT, in_range
from koalarization.data import images, outputs, squash
from koalarization.errors import KoalarizationError
from koalarization.files import write_text_atomic
from koalarization.plots import plot_grid
from koalarization.run import TrainedRun

log = logging.getLogger(__name__)

OUTPUT_FOLDERS = ("predicted", "bw", "actual")
SSIM_WINDOW = 7  # scikit-image's default (Wang et al. 2004 use 11 with a Gaussian)
SUMMARY_KEYS = ("n_images", "psnr", "ssim", "colorfulness", "gray_psnr", "gray_ssim", "gt_colorfulness",
                "frame", "gt_frame", "auc", "gray_auc")
FRAME_SIZE, FRAME_BAND = 64, 6  # frame_statistic: compared at 64 x 64, over the outer 6-pixel band
ACCURACY_THRESHOLDS = 150  # raw accuracy: t = 0, 1, ..., 150 (Zhang et al.)


def colorfulness(rgb_uint8: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness of a uint8 RGB image (docs/reference.md): 0 for gray."""
    r, g, b = (rgb_uint8[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def frame_statistic(rgb_uint8: np.ndarray) -> float:
    """How much more the colour changes along the borders than inside: at 64 x 64, the mean of |da| + |db|
    (finite differences in Lab, both directions) over the outer 6-pixel band, divided by the same mean over
    the interior. Photos score about 0.75; a colour frame (bands of another hue along the borders) scores
    well above 1."""
    small = squash.resize_rgb(rgb_uint8, FRAME_SIZE)
    ab = color.unscale_ab(color.network_ab(small)).astype(np.float64)
    change = (np.abs(np.diff(ab, axis=1))[:-1] + np.abs(np.diff(ab, axis=0))[:, :-1]).sum(axis=-1)
    band = np.ones(change.shape, bool)
    band[FRAME_BAND:-FRAME_BAND, FRAME_BAND:-FRAME_BAND] = False
    inside = change[~band].mean()
    return float(change[band].mean() / inside) if inside > 0 else float("nan")


def ab_accuracy_auc(true_ab: np.ndarray, predicted: np.ndarray) -> float:
    """Zhang et al.'s raw accuracy of uint8 RGB `predicted` (H, W, 3) against the photo's ab (H, W, 2) in
    [-1, 1] (color.network_ab's, computed once per photo by the caller): the share of pixels whose
    ab is within t of the photo's, averaged over t = 0..ACCURACY_THRESHOLDS (1 = every pixel exact)."""
    ours_ab = color.network_ab(predicted)
    distance = np.hypot(*np.moveaxis(ours_ab - true_ab, -1, 0)).ravel() * color.AB_SCALE
    thresholds = np.arange(ACCURACY_THRESHOLDS + 1)
    within = np.searchsorted(np.sort(distance), thresholds, side="right") / distance.size
    return float(within.mean())


def image_metrics(actual: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """(PSNR in dB, SSIM) of a uint8 RGB prediction against the photo. SSIM's 7-px window shrinks to the
    largest odd size that fits a photo with a shorter side (e.g. 5000 x 5); below 3 px SSIM is undefined:
    NaN, left out of the means."""
    with np.errstate(divide="ignore"):  # identical images: PSNR is +inf, by definition
        psnr = peak_signal_noise_ratio(actual, predicted, data_range=255)
    side = min(actual.shape[:2])
    window = min(SSIM_WINDOW, side if side % 2 else side - 1)
    if window < 3:
        return float(psnr), float("nan")
    ssim = structural_similarity(actual, predicted, channel_axis=-1, data_range=255, win_size=window)
    return float(psnr), float(ssim)


def test_files(data: str | Path | None, run: TrainedRun) -> list[Path]:
    """The held-out photos of the run's split that lie in `data` when it is a folder the run trained on,
    else every photo of `data`; data None: all the held-out photos of the run's split."""
    split = run.split()
    if data is None:
        if split is None:
            raise KoalarizationError(f"data: {run.weights} records no photos ({run.split_file} is missing); "
                                     "give a folder of photos to test on")
        return list(split.test)
    if split is not None:
        if split.belongs_to(data):
            folder = Path(os.path.abspath(data))
            return [f for f in split.test if f.is_relative_to(folder)]
        log.info("%s belongs to %s, not %s: testing on every photo of %s", run.split_file, split.root, data, data)
    return images.find_images(data)


def _append_rows(path: Path, rows: list[dict]) -> None:
    """Append `rows` to the CSV file `path`, with the header when the file is new. Always UTF-8 (names are
    `images.display_name`s, valid UTF-8 whatever bytes the file names hold), whatever the locale."""
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def score_photos(colorizer, files, saturation=1.0, temperature=None, batch_size=16, on_batch=None):
    """Colorize `files` with `colorizer` (colorize.Colorizer) as `colorize` does and measure each photo.
    Returns (rows: one dict of metrics per readable photo, skipped: images.SkipLog). on_batch(items), if
    given, gets each batch as dicts {"path", "actual", "predicted", "bw", "row"} (uint8 RGB at the photos'
    own sizes)."""
    from koalarization.inference.join import gray_from_lightness

    rows, skipped = [], images.SkipLog(log)
    for start in tqdm(range(0, len(files), batch_size), desc="test", unit="batch", leave=False):
        loaded = skipped.load_each(files[start : start + batch_size], alone=len(files) == 1)
        if not loaded:
            continue
        predicted = colorizer.colorize_many([rgb for _, rgb in loaded], saturation, temperature)
        items = []
        for (path, actual), ours in zip(loaded, predicted):
            bw = gray_from_lightness(actual)
            true_ab = color.network_ab(actual)  # full resolution: once for both accuracies
            psnr, ssim = image_metrics(actual, ours)
            gray_psnr, gray_ssim = image_metrics(actual, bw)
            row = {"file": images.display_name(path), "psnr": psnr, "ssim": ssim,
                   "colorfulness": colorfulness(ours), "gray_psnr": gray_psnr, "gray_ssim": gray_ssim,
                   "gt_colorfulness": colorfulness(actual), "frame": frame_statistic(ours),
                   "gt_frame": frame_statistic(actual), "auc": ab_accuracy_auc(true_ab, ours),
                   "gray_auc": ab_accuracy_auc(true_ab, bw),
                   # judged as the cache judges training photos (color.is_gray at the embedder's resolution)
                   "gray_truth": color.is_gray(squash.resize_rgb(actual, colorizer.resolution))}
            rows.append(row)
            items.append({"path": path, "actual": actual, "predicted": ours, "bw": bw, "row": row})
        if on_batch is not None:
            on_batch(items)
    skipped.close()
    return rows, skipped


def summarize(rows: list[dict], skipped: int = 0) -> dict:
    """Means over the photos that have colour (photos that are gray themselves have no colour to recover,
    and the gray baseline reproduces them exactly: infinite PSNR); how many photos beat gray."""
    scored = [r for r in rows if not r["gray_truth"]] or rows
    summary = {"n_images": len(scored)}
    summary.update({k: float(np.nanmean([r[k] for r in scored])) for k in SUMMARY_KEYS[1:]})
    summary.update(n_gray_truth=len(rows) - len(scored) if scored is not rows else 0, skipped=skipped,
                   # a mean can hide a minority of photos ruined by a wrong cast: how many beat gray at all
                   n_better_than_gray=int(sum(r["psnr"] > r["gray_psnr"] for r in scored)))
    return summary


def evaluate(data, run, output=TEST_OUT, batch_size=TEST_BATCH, embedder_weights=None, limit=None,
             grid_rows=GRID_ROWS, saturation=1.0, temperature=None, size=None) -> dict:
    """Run `test` (see the module docstring, plus `grid.png` of `grid_rows` photos); returns the summary.
    saturation, temperature, size: as `colorize`'s."""
    from koalarization.inference.colorize import Colorizer

    in_range("batch_size", batch_size, at_least=1)
    in_range("grid_rows", grid_rows, at_least=1)
    if limit is not None:  # files[:-1] would quietly leave out the last photo
        in_range("limit", limit, at_least=1)
    run = TrainedRun.at(run)
    files = test_files(data, run)[:limit]
    if not files:
        raise KoalarizationError(f"data {data}: no photos to test on")
    # An evenly spread, deterministic sample for the picture grid.
    in_grid = {files[int(i)] for i in np.linspace(0, len(files) - 1, min(grid_rows, len(files))).round()}
    grid = []
    colorizer = Colorizer(run, size, embedder_weights)
    output = Path(output)
    for folder in OUTPUT_FOLDERS:
        (output / folder).mkdir(parents=True, exist_ok=True)
    out_names = dict(zip(files, outputs.output_names(files, [output / folder for folder in OUTPUT_FOLDERS])))
    metrics = output / "metrics.csv"
    metrics.unlink(missing_ok=True)  # rows are appended batch by batch: none from an earlier run

    def write(items):
        for item in items:
            name = out_names[item["path"]]
            for folder in OUTPUT_FOLDERS:  # predicted/ is colorize's output, mark included: the same bytes
                outputs.save_png_atomic(item[folder], output / folder / name,
                                        text=outputs.OUTPUT_MARK if folder == "predicted" else None)
            item["row"]["output"] = images.display_name(name)
            if item["path"] in in_grid:
                grid.append({"name": images.display_name(item["path"].name), "bw": item["bw"],
                             "predicted": item["predicted"], "actual": item["actual"], "psnr": item["row"]["psnr"],
                             "gray_psnr": item["row"]["gray_psnr"]})
        _append_rows(metrics, [{"file": i["row"]["file"], "output": i["row"]["output"],
                                **{k: v for k, v in i["row"].items() if k not in ("file", "output")}} for i in items])

    rows, skipped = score_photos(colorizer, files, saturation, temperature, batch_size, on_batch=write)
    if not rows:
        raise KoalarizationError(f"data {data}: none of the {len(files)} photos could be read")
    summary = summarize(rows, skipped.count)
    summary.update(saturation=float(saturation), temperature=colorizer.temperature(temperature))
    write_text_atomic(output / "summary.json", json.dumps(summary, indent=2))
    plot_grid(grid, output / "grid.png")  # last: a picture that fails must not cost the numbers
    return summary


def format_summary(summary: dict, output: str | Path) -> str:
    """The lines `test` prints for people: our means against the gray baseline's, which is better, how many
    photos, and where the outputs are (summary.json keeps every number)."""
    counts = [f"means over {summary['n_images']} photo(s)"]
    if summary["n_gray_truth"]:
        counts.append(f"{summary['n_gray_truth']} gray photo(s) left out of the means")
    if summary["skipped"]:
        counts.append(f"{summary['skipped']} file(s) skipped")
    lines = ["; ".join(counts), f"{'':15}{'ours':>8}{'gray baseline':>15}  ours vs gray"]
    for label, key, digits in (("PSNR (dB)", "psnr", 2), ("SSIM", "ssim", 3), ("ab accuracy", "auc", 3)):
        ours, gray = summary[key], summary[f"gray_{key}"]
        lines.append(f"{label:15}{ours:>8.{digits}f}{gray:>15.{digits}f}  {_verdict(ours, gray)}"
                     + (f" ({summary['n_better_than_gray']} of {summary['n_images']} photos above gray)"
                        if key == "psnr" and "n_better_than_gray" in summary else ""))
    # The gray baseline has no colour: colourfulness 0 (Hasler & Suesstrunk's measure of a gray image). Ours
    # is better when it is nearer the photos' own colourfulness than 0 is.
    ours, photos = summary["colorfulness"], summary["gt_colorfulness"]
    lines.append(f"{'colourfulness':15}{ours:>8.1f}{0.0:>15.1f}  {_verdict(-abs(ours - photos), -photos)} "
                 f"(the photos: {photos:.1f})")
    folders = "".join(f"{folder}/, " for folder in OUTPUT_FOLDERS)
    lines.append(f"outputs in {images.display_name(output)}: {folders}metrics.csv (per photo), summary.json, grid.png")
    return "\n".join(lines)


def _verdict(ours: float, gray: float) -> str:
    """Higher is better."""
    return "better" if ours > gray else "worse" if ours < gray else "same"
