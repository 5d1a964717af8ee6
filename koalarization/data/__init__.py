"""Photos on disk to training batches: decoding any photo (images.py), squashing it to the network's size
(squash.py), writing PNGs (outputs.py, png.py), which files a run reads (sources.py), the cache of decoded
photos and their embeddings (cache.py), the train/val/test split (split.py) and the batch source that feeds
`fit` (batches.py). Uses the model's embedders to fill the cache."""
