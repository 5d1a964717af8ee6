"""koalarization: Deep Koalarization (Baldassarre et al. 2017) on Keras 3.

    cli/          the command line: parses flags, calls one function below, prints for people
    bench/        the measuring kit (imported by the CLI only)
    training/     fit with the recipe's callbacks, backups, distribution   -> writes a run folder
    inference/    colorize, test, export, the web page                      <- reads a run folder
    run.py        a trained run: folder, weights, config.json, split.json; the shipped weights
    data/         photos on disk -> cache (photo + embedding) -> batches
    model/        the network, the embedders, the in-graph preprocessing
    config.py · color.py · files.py · errors.py  the facts everything else shares

Imports run one way, down this list. Importing the package is cheap: Keras/TensorFlow are imported only
by the modules that need them.
"""

__version__ = "0.1.0"
