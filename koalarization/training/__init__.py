"""Training: `Model.fit` with the recipe's callbacks (train.py, callbacks.py), mid-epoch backups and resume
(backup.py), and several GPUs or machines (distribute.py). Writes a run folder (run.py reads it back)."""
