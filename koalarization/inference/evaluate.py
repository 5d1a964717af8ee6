"""`test`: colorize held-out photos, write the reference's outputs and measure them honestly.

For each photo (squashed to the network size S x S, as in training), writes
    predicted/NAME.png   L of the photo + predicted ab
    bw/NAME.png          L of the photo, ab = 0 (the gray baseline every number must beat)
    actual/NAME.png      the photo itself
NAME.png is the photo's own name (`images.output_names`, as `colorize` names them): a.png and a.tif give
a.png and a-1.png. `metrics.csv` (per photo: the file, its output NAME.png, PSNR and SSIM on RGB against the
photo, colourfulness, the frame statistic; the same for the gray baseline and the photo) grows by a batch of
rows as each batch is done, so a run that fails or is killed later keeps the rows of the photos already
written. Then `summary.json` (the means over the photos that have colour; photos that are gray themselves,
by file mode or by content, are listed in metrics.csv and counted as `n_gray_truth`) and last `grid.png`
(bw | predicted | actual rows for a sample, captioned with PSNR). PSNR/SSIM come from scikit-image;
`format_summary` is what `test` prints for people.
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

from koalarization.data import images
from koalarization.data.cache import photo_inputs
from koalarization.run import TrainedRun
from koalarization.model.embedders import get_spec
from koalarization.io import write_text_atomic
from koalarization.errors import KoalarizationError
from koalarization.plots import plot_grid

log = logging.getLogger(__name__)

OUTPUT_FOLDERS = ("predicted", "bw", "actual")
SUMMARY_KEYS = ("n_images", "psnr", "ssim", "colorfulness", "gray_psnr", "gray_ssim", "gt_colorfulness",
                "frame", "gt_frame")
FRAME_SIZE, FRAME_BAND = 64, 6  # frame_statistic: compared at 64 x 64, over the outer 6-pixel band


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
    small = images.resize_rgb(rgb_uint8, FRAME_SIZE)
    ab = color.unscale_ab(color.rgb_uint8_to_network(small)[1]).astype(np.float64)
    change = (np.abs(np.diff(ab, axis=1))[:-1] + np.abs(np.diff(ab, axis=0))[:, :-1]).sum(axis=-1)
    band = np.ones(change.shape, bool)
    band[FRAME_BAND:-FRAME_BAND, FRAME_BAND:-FRAME_BAND] = False
    inside = change[~band].mean()
    return float(change[band].mean() / inside) if inside > 0 else float("nan")


def image_metrics(actual: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """(PSNR in dB, SSIM) of a uint8 RGB prediction against the photo."""
    with np.errstate(divide="ignore"):  # identical images: PSNR is +inf, by definition
        psnr = peak_signal_noise_ratio(actual, predicted, data_range=255)
    ssim = structural_similarity(actual, predicted, channel_axis=-1, data_range=255)
    return float(psnr), float(ssim)


def test_files(data: str | Path, run: TrainedRun) -> list[Path]:
    """The held-out photos of the run's split that lie in `data` when it is a folder the run trained on,
    else every photo of `data`."""
    split = run.split()
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


def evaluate(data, run, output, batch_size=16, embedder_weights=None, limit=None, grid_rows=8) -> dict:
    """Run `test` (see the module docstring, plus `grid.png` of `grid_rows` photos); returns the summary."""
    run = TrainedRun.at(run)
    files = test_files(data, run)[:limit]
    if not files:
        raise KoalarizationError(f"data {data}: no photos to test on")
    # An evenly spread, deterministic sample for the picture grid.
    in_grid = {files[int(i)] for i in np.linspace(0, len(files) - 1, min(grid_rows, len(files))).round()}
    grid = []
    model, cfg = run.load(embedder_weights)
    size, resolution = cfg.train.image_size, get_spec(cfg.model.embedder).resolution
    output = Path(output)
    for folder in OUTPUT_FOLDERS:
        (output / folder).mkdir(parents=True, exist_ok=True)
    out_names = dict(zip(files, images.output_names(files, [output / folder for folder in OUTPUT_FOLDERS])))
    metrics = output / "metrics.csv"
    metrics.unlink(missing_ok=True)  # rows are appended batch by batch: none from an earlier run

    rows, skipped = [], images.SkipLog(log)
    for start in tqdm(range(0, len(files), batch_size), desc="test", unit="batch", leave=False):
        batch, for_embedder, gray, names = [], [], [], []
        for path in files[start : start + batch_size]:
            try:
                small, seen, is_gray = photo_inputs(images.load_rgb(path, max_side=max(size, resolution)), size,
                                                    resolution)
                batch.append(small)
                for_embedder.append(seen)
                gray.append(is_gray)
                names.append((path, out_names[path]))
            except images.ImageError as err:
                if len(files) == 1:  # one photo asked for: its problem is the command's error
                    raise
                skipped.add(err)
        if not batch:
            continue
        actual = np.stack(batch)
        lightness, true_ab = color.rgb_uint8_to_network(actual)
        # Mean chroma of the photo itself: below 1 (of about 128) the photo has no colour to recover.
        chroma = np.hypot(true_ab[..., 0], true_ab[..., 1]).mean(axis=(1, 2)) * color.AB_SCALE
        ab = np.asarray(model.predict_on_batch({"L": lightness, "L_embedder": np.stack(for_embedder)}))
        predicted = color.to_uint8(color.network_to_rgb(lightness, ab))
        bw = color.to_uint8(color.gray_rgb_from_l(lightness))
        for i, (path, name) in enumerate(names):
            for folder, img in zip(OUTPUT_FOLDERS, (predicted[i], bw[i], actual[i])):
                images.save_png_atomic(img, output / folder / name)
            psnr, ssim = image_metrics(actual[i], predicted[i])
            gray_psnr, gray_ssim = image_metrics(actual[i], bw[i])
            rows.append({
                "file": images.display_name(path), "output": images.display_name(name),
                "psnr": psnr, "ssim": ssim, "colorfulness": colorfulness(predicted[i]),
                "gray_psnr": gray_psnr, "gray_ssim": gray_ssim, "gt_colorfulness": colorfulness(actual[i]),
                "frame": frame_statistic(predicted[i]), "gt_frame": frame_statistic(actual[i]),
                "gray_truth": bool(chroma[i] < 1.0 or gray[i]),
            })
            if path in in_grid:
                grid.append({"name": images.display_name(path.name), "bw": bw[i], "predicted": predicted[i],
                             "actual": actual[i], "psnr": psnr, "gray_psnr": gray_psnr})
        _append_rows(metrics, rows[-len(names):])
    skipped.close()
    if not rows:
        raise KoalarizationError(f"data {data}: none of the {len(files)} photos could be read")

    # Photos that are gray themselves have no colour to recover, and the gray baseline reproduces them
    # exactly (infinite PSNR): the means cover the colour photos; metrics.csv lists every photo.
    scored = [r for r in rows if not r["gray_truth"]] or rows
    summary = {"n_images": len(scored)}
    summary.update({k: float(np.nanmean([r[k] for r in scored])) for k in SUMMARY_KEYS[1:]})
    summary.update(n_gray_truth=len(rows) - len(scored) if scored is not rows else 0, skipped=skipped.count,
                   # a mean can hide a minority of photos ruined by a wrong cast: how many beat gray at all
                   n_better_than_gray=int(sum(r["psnr"] > r["gray_psnr"] for r in scored)))
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
    for label, key, digits in (("PSNR (dB)", "psnr", 2), ("SSIM", "ssim", 3)):
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
