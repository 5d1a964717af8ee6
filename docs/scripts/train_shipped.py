"""Train the weights that ship in koalarization/weights/ (docs/model_card.md says how they were made).

    python -m koalarization prepare --data path/to/imagenet-sample --out runs/prep64 --image-size 64
    python docs/scripts/train_shipped.py --data path/to/imagenet-sample --output runs/shipped --prepared runs/prep64

The shipped run trained on a sample of ImageNet with one photo per class (977 of the 1000 in colour): 85 %
train, 10 % validation, 5 % test; the 128 COCO photos of docs/results.md are never seen. The defaults below
are the shipped run's; where they differ from the reference recipe, docs/model_card.md says why. It needs
TrainConfig fields the CLI does not expose (split fractions, callback patience), hence a script rather than
a `train` command.
"""

import argparse
import logging

from koalarization.config import AugmentConfig, ModelConfig, RunConfig, TrainConfig
from koalarization.training.train import train


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder of photos (the shipped run: ImageNet, one per class)")
    p.add_argument("--output", default="runs/shipped")
    p.add_argument("--prepared", default=None, help="a `prepare` folder of --data at --image-size")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--embedder", default="efficientnet_lite0_pooled")
    p.add_argument("--embedding-dropout", type=float, default=0.5)
    p.add_argument("--zoom", type=float, default=AugmentConfig.zoom)
    p.add_argument("--rotation", type=float, default=AugmentConfig.rotation)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    cfg = RunConfig(
        model=ModelConfig(image_size=args.image_size, embedder=args.embedder, batch_norm=args.batch_norm,
                          embedding_dropout=args.embedding_dropout),
        train=TrainConfig(
            data=args.data, output=args.output, epochs=args.epochs, batch_size=args.batch_size,
            optimizer=args.optimizer, learning_rate=args.learning_rate,
            val_fraction=0.1, test_fraction=0.05,  # coco-val128 is the real test set
            early_stopping_patience=25, reduce_lr_factor=0.3, reduce_lr_patience=8, min_learning_rate=1e-5,
            prepared=args.prepared, device_preprocessing=True,
            augment=AugmentConfig(zoom=args.zoom, rotation=args.rotation),
        ),
    )
    result = train(cfg, verbose=2)
    print(f"epochs run: {result.epochs_run}")


if __name__ == "__main__":
    main()
