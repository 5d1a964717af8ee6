"""Embedding time per photo of EfficientNet-Lite0 and Inception-ResNet-v2, side by side (README table)."""
import os
import time

import numpy as np

from koalarization.model.embedders import RANDOM, build_embedder

x = np.random.default_rng(0).uniform(-1, 1, (16, 256, 256, 1)).astype("float32")
for name, w in (("efficientnet_lite0", None), ("inception_resnet_v2", RANDOM)):
    e = build_embedder(name, w); e.predict_on_batch(x)
    times = []
    for _ in range(3):
        t = time.perf_counter(); e.predict_on_batch(x); times.append((time.perf_counter() - t) / 16)
    print(name, "ms/photo median", round(1000 * sorted(times)[1], 1), "load", os.getloadavg()[0])
