"""The network can learn: on two real photos the loss falls at least tenfold in a bounded number of steps."""

import keras
import numpy as np

from koalarization import color, images
from koalarization.config import UP, ModelConfig
from koalarization.embedding import build_embedder
from koalarization.model import build_model
from conftest import REPO


def test_overfits_two_photos():
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(
        image_size=32,
        encoder=((16, 2), (32, 1), (32, 2), (32, 1), (32, 2), (32, 1), (32, 1), (32, 1)),
        fusion_filters=32,
        decoder=(32, UP, 32, UP, 16, 16),
        embedder="tiny_random",
    )
    rgb = np.stack([images.resize_rgb(images.load_rgb(REPO / "data" / f"{name}.jpg"), 32) for name in ("astronaut", "coffee")])
    lightness, ab = color.rgb_uint8_to_network(rgb)
    model = build_model(cfg, build_embedder("tiny_random"))
    # The reference optimiser (RMSprop 1e-3) and loss (MSE on ab).
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3), loss="mse")
    first = float(model.evaluate(lightness, ab, verbose=0))
    history = model.fit(lightness, ab, epochs=400, batch_size=2, verbose=0)
    last = min(history.history["loss"][-20:])
    assert first > 1e-3  # there is something to learn
    assert last < first / 10, (first, last)
