"""Short, matched training runs that measure one change of the recipe at a time (docs/model_card.md).

    python docs/scripts/recipe_probes.py --cache CACHE_DIR [--train 3000] [--val 500] [--epochs 3]

Draws the same photos for every run from a training cache (`prepare`'s or `train`'s, 64 px), keeping to
photos of at least 128 px so that working sizes can be compared, and trains the reference network from
scratch for each of these runs:

    A  64 px, the embedder sees the gray photo at its own resolution, resized from the full photo
    B  64 px, the embedder sees the 64 px L, upsampled (what the earlier versions did)
    C  128 px, as A

Every run is scored the way `colorize` works: the predicted ab is upsampled to 128 px and joined with the
photo's own L at 128 px; PSNR against the photo and against the gray baseline, and colourfulness. The
photos are held in memory (a few hundred MB), augmentation is the horizontal flip only.
"""

from __future__ import annotations

import argparse
import json
import time

import keras
import numpy as np

from koalarization import color
from koalarization.config import ModelConfig
from koalarization.data import cache, images, squash
from koalarization.inference.evaluate import colorfulness, image_metrics
from koalarization.model.embedders import build_embedder
from koalarization.model.network import colorizer_of
from koalarization.model.task import build_training_model
from koalarization.training.train import make_optimizer

EVAL = 128


def load(paths, size):
    return np.stack([squash.resize_rgb(images.load_rgb(p, max_side=size), size) for p in paths])


def flips(count, rng):
    return np.stack([np.diag([rng.choice([-1.0, 1.0]), 1.0]) for _ in range(count)]).astype(np.float32)


def run(name, size, photos, embeddings, val, val_embeddings, args):
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(embedder="efficientnet_lite0_pooled")
    model = build_training_model(cfg, embeddings.shape[1], size)
    model.compile(optimizer=make_optimizer("adam", args.learning_rate))
    rng, start = np.random.default_rng(0), time.time()
    for _ in range(args.epochs):
        batch = {"rgb": photos, "affine": flips(len(photos), rng), "embedding": embeddings,
                 "weight": np.ones((len(photos), 1, 1), np.float32)}
        model.fit(batch, batch_size=32, epochs=1, shuffle=True, verbose=0)
    seconds = time.time() - start
    small = np.stack([squash.resize_rgb(v, size) for v in val])
    ab = np.asarray(colorizer_of(model).predict([color.network_lightness(small), val_embeddings], verbose=0))
    from koalarization.inference.join import join_lightness

    rows = []
    for photo, predicted in zip(val, ab):
        out = join_lightness(photo, predicted)
        gray = join_lightness(photo, np.zeros_like(predicted))
        psnr, _ = image_metrics(photo, out)
        gray_psnr, _ = image_metrics(photo, gray)
        rows.append((psnr, gray_psnr, colorfulness(out), colorfulness(photo)))
    psnr, gray_psnr, ours, truth = np.mean(rows, axis=0)
    result = {"run": name, "size": size, "psnr": psnr, "gray_psnr": gray_psnr, "gain_db": psnr - gray_psnr,
              "colourfulness_share": ours / truth, "above_gray": float(np.mean([r[0] > r[1] for r in rows])),
              "train_seconds": seconds}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--runs", default="ABC")
    args = parser.parse_args()

    store = cache.Cache(args.cache)
    # Photos of at least EVAL px (Tiny ImageNet's are 64 px): judged by the file, once.
    candidates = [p for p in store.usable if "tiny-imagenet" not in str(p)]
    rng = np.random.default_rng(1)
    chosen = [candidates[i] for i in rng.permutation(len(candidates))[: args.train + args.val]]
    train_paths, val_paths = chosen[: args.train], chosen[args.train :]
    full = {p: store.embedding(store.row_of(p)) for p in chosen}
    val = load(val_paths, EVAL)
    val_full = np.stack([full[p] for p in val_paths])
    train_full = np.stack([full[p] for p in train_paths])
    photos64 = np.stack([store.photo(store.row_of(p)) for p in train_paths])
    results = []
    if "A" in args.runs:
        results.append(run("A: embedder sees the full photo", 64, photos64, train_full, val, val_full, args))
    if "B" in args.runs:
        embedder = build_embedder("efficientnet_lite0_pooled")
        from_small = lambda rgb: np.asarray(embedder.predict(color.network_lightness(rgb), batch_size=64, verbose=0))  # noqa: E731
        val64 = np.stack([squash.resize_rgb(v, 64) for v in val])
        results.append(run("B: embedder sees the 64 px L", 64, photos64, from_small(photos64), val,
                           from_small(val64), args))
    if "C" in args.runs:
        results.append(run("C: 128 px", 128, load(train_paths, 128), train_full, val, val_full, args))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
