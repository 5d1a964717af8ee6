"""Choose a trained run's weightless settings, border_context and ab_gain, on its own validation photos.

    python docs/scripts/calibrate.py --run RUN [--limit 2000] [--target-db 1.0] [--gains 1.0 1.1 ...]

The validation photos come from the same data sets as the training photos and were never trained on; the
photos on which results are published are never used here. For every border context and gain, on the
validation photos at the working size (as `test` measures): PSNR against the gray baseline's, colourfulness
as a share of the photos' own, and the frame statistic (evaluate.frame_statistic). The rule, fixed before
any published photo was looked at:

    border_context  the smallest of 0, 8, 16, 24 px whose mean frame statistic is at most 1.0
    ab_gain         the largest gain on a 0.1 grid whose mean PSNR is at least --target-db above the gray
                    baseline's (the published target); 1.0 when even the raw predictions are below it

Prints one JSON line per setting, then the chosen one as JSON on the last line. Reads photos and their
embeddings from the run's training cache (train.photo_cache: its config's `cache`, or the automatic one).
"""

import argparse
import json

import numpy as np

from koalarization import color
from koalarization.inference.evaluate import colorfulness, frame_statistic, image_metrics
from koalarization.model.network import ABGain, colorizer_of, mirror_pad
from koalarization.run import TrainedRun
from koalarization.training.train import photo_cache

BORDERS = (0, 8, 16, 24)
GAINS = np.round(np.arange(1.0, 3.01, 0.1), 2)


def baselines(photos: np.ndarray, lightness: np.ndarray) -> dict:
    """What every setting is compared with: the gray baseline's mean PSNR (ab = 0), the photos' colourfulness."""
    gray = color.to_uint8(color.gray_rgb_from_l(lightness))
    return {"gray_psnr": float(np.mean([image_metrics(a, g)[0] for a, g in zip(photos, gray)])),
            "truth_colourfulness": float(np.mean([colorfulness(x) for x in photos]))}


def scores(photos: np.ndarray, lightness: np.ndarray, ab: np.ndarray, base: dict) -> dict:
    predicted = color.to_uint8(color.network_to_rgb(lightness, ab))
    psnr = np.mean([image_metrics(a, p)[0] for a, p in zip(photos, predicted)])
    ours = np.mean([colorfulness(x) for x in predicted])
    return {"psnr": float(psnr), "gray_psnr": base["gray_psnr"], "gain_db": float(psnr - base["gray_psnr"]),
            "colourfulness_share": float(ours / base["truth_colourfulness"]),
            "frame": float(np.nanmean([frame_statistic(p) for p in predicted]))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a train output folder")
    parser.add_argument("--limit", type=int, default=2000, help="validation photos to use (default: 2000)")
    parser.add_argument("--target-db", type=float, default=1.0, help="dB above the gray baseline to keep")
    parser.add_argument("--gains", type=float, nargs="+", default=list(GAINS),
                        help="gains to try, ascending (default: 1.0 to 3.0 in steps of 0.1)")
    args = parser.parse_args()
    run = TrainedRun.at(f"{args.run}/colorize.weights.h5")
    model, cfg = run.load()
    if cfg.model.ab_gain != 1.0 or cfg.model.border_context:
        raise SystemExit(f"{args.run}: calibrate a run as trained (ab_gain 1, border_context 0)")
    store = photo_cache(cfg, progress=False)  # the run's own cache: nothing is decoded or embedded again
    val = run.split().val[: args.limit]
    photos = np.stack([store.photo(store.row_of(p)) for p in val])
    embeddings = np.stack([store.embedding(store.row_of(p)) for p in val])
    lightness = color.network_lightness(photos)
    colorizer = colorizer_of(model)
    base = baselines(photos, lightness)
    rows = []
    for border in BORDERS:
        # the inference model's own steps: mirror_pad before the network, ABGain after it (network.py)
        padded = np.asarray(mirror_pad(lightness, border))
        raw = np.asarray(colorizer.predict([padded, embeddings], batch_size=64, verbose=0))
        raw = raw[:, border : border + lightness.shape[1], border : border + lightness.shape[2]]
        for gain in args.gains:
            ab = np.asarray(ABGain(gain)(raw))
            rows.append({"border_context": border, "ab_gain": float(gain), "n_images": len(val),
                         **scores(photos, lightness, ab, base)})
            print(json.dumps(rows[-1]), flush=True)
    unframed = [b for b in BORDERS if next(r for r in rows if r["border_context"] == b)["frame"] <= 1.0]
    border = unframed[0] if unframed else BORDERS[-1]
    candidates = [r for r in rows if r["border_context"] == border]
    kept = [r for r in candidates if r["gain_db"] >= args.target_db]
    chosen = kept[-1] if kept else candidates[0]
    print(json.dumps(chosen))


if __name__ == "__main__":
    main()
