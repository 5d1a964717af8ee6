"""Using a trained run: colorizing photos at full resolution (colorize.py), measuring held-out photos
(evaluate.py), exporting the model (export.py) and the web page and HTTP API (web/)."""
