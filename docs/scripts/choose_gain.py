"""Choose ModelConfig.ab_gain for a trained run on its own held-out ImageNet photos (val + test split).

    python docs/scripts/choose_gain.py --run runs/shipped [--margin 0]

MSE training shrinks uncertain colours toward the mean; a gain g > 1 on how the predicted ab varies within
each photo (network.ABGain) buys colourfulness at the price of PSNR. Rule (fixed before looking at any test set): the most colourful, i.e. the largest, g on
a 0.1 grid whose mean PSNR on these photos is still at least --margin dB above the gray baseline's (the
shipped weights' two targets, PSNR above gray and colour, moved onto photos we may look at). coco-val128, the test
set, is never used here.
Prints one line per gain and the chosen one as JSON on the last line.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from koalarization import color

from koalarization.data import images
from koalarization.run import WEIGHTS_FILE, load_trained
from koalarization.data.split import SPLIT_FILE, Split
from koalarization.inference.evaluate import colorfulness, image_metrics
from koalarization.model.network import ABGain

GAINS = np.round(np.arange(1.0, 3.01, 0.1), 2)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a train output folder")
    p.add_argument("--margin", type=float, default=0.0, help="dB above the gray baseline to keep (default 0)")
    args = p.parse_args()
    run = Path(args.run)
    split = Split.load(run / SPLIT_FILE)
    model, cfg = load_trained(run / WEIGHTS_FILE)
    size = cfg.model.image_size
    actual = np.stack([images.resize_rgb(images.load_rgb(f, max_side=size), size) for f in split.val + split.test])
    lightness, _ = color.rgb_uint8_to_network(actual)
    if cfg.model.ab_gain != 1.0:
        raise SystemExit(f"{run}: choose the gain of a run trained with ab_gain 1, not {cfg.model.ab_gain}")
    ab = np.asarray(model.predict(lightness, verbose=0))
    gray = color.to_uint8(color.gray_rgb_from_l(lightness))
    gray_psnr = np.mean([image_metrics(a, g)[0] for a, g in zip(actual, gray)])
    truth = np.mean([colorfulness(a) for a in actual])
    chosen = {"ab_gain": 1.0}
    for gain in GAINS:
        predicted = color.to_uint8(color.network_to_rgb(lightness, np.asarray(ABGain(gain)(ab))))
        psnr = float(np.mean([image_metrics(a, q)[0] for a, q in zip(actual, predicted)]))
        colour = float(np.mean([colorfulness(q) for q in predicted]))
        row = {"ab_gain": float(gain), "psnr": psnr, "gray_psnr": float(gray_psnr), "colorfulness": colour,
               "gt_colorfulness": float(truth), "n_images": len(actual)}
        print(json.dumps(row))
        if psnr >= gray_psnr + args.margin:
            chosen = row
    print(json.dumps(chosen))


if __name__ == "__main__":
    main()
