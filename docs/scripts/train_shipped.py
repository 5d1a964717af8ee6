"""Train the weights that ship in koalarization/weights/ (docs/model_card.md says how they were made).

    python docs/scripts/train_shipped.py --output runs/shipped [--epochs 150] [--image-size 64] ...

Every photo of ../shared/data/imagenet-sample (one per ImageNet class) except a 5% test split; COCO is
never seen. The settings below differ from the reference recipe where the model card explains why.
"""

import argparse
import logging
from pathlib import Path

from koalarization.config import AugmentConfig, ModelConfig, RunConfig, TrainConfig
from koalarization.train import train


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared/data/imagenet-sample"))
    p.add_argument("--output", default="runs/shipped")
    p.add_argument("--prepared", default=None, help="a `prepare` folder of --data at --image-size")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--no-batch-norm", action="store_true")
    p.add_argument("--embedder", default="efficientnet_lite0")
    p.add_argument("--embedding-dropout", type=float, default=0.5)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    cfg = RunConfig(
        model=ModelConfig(image_size=args.image_size, embedder=args.embedder, batch_norm=not args.no_batch_norm,
                          embedding_dropout=args.embedding_dropout),
        train=TrainConfig(
            data=args.data, output=args.output, epochs=args.epochs, batch_size=args.batch_size,
            optimizer=args.optimizer, learning_rate=args.learning_rate,
            val_fraction=0.1, test_fraction=0.05,  # coco-val128 is the real test set
            early_stopping_patience=25, reduce_lr_factor=0.3, reduce_lr_patience=8, min_learning_rate=1e-5,
            prepared=args.prepared, device_preprocessing=True,
            augment=AugmentConfig(),
        ),
    )
    result = train(cfg, verbose=2)
    print(f"epochs run: {result.epochs_run}")


if __name__ == "__main__":
    main()
