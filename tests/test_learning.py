"""The network can learn: on two real photos the loss falls at least tenfold in a bounded number of steps,
through the training model that `train` builds (in-graph preprocessing, loss inside)."""

import keras
import numpy as np
import pytest

from koalarization import color
from koalarization.config import UP, ModelConfig
from koalarization.data import images, squash
from koalarization.model.embedders import build_embedder
from koalarization.model.task import build_training_model

from conftest import REPO


def overfit_two_photos(epochs: int = 400) -> tuple[float, float]:
    """Fit a tiny network to data/astronaut.jpg and data/coffee.jpg at 32 px with the reference optimiser;
    -> (loss before, lowest loss of the last 20 epochs). tests/test_jax_backend.py runs it on JAX."""
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(
        encoder=((16, 2), (32, 1), (32, 2), (32, 1), (32, 2), (32, 1), (32, 1), (32, 1)),
        fusion_filters=32,
        decoder=(32, UP, 32, UP, 16, 16),
        embedder="tiny_random",
    )
    photos = [images.load_rgb(REPO / "data" / f"{name}.jpg") for name in ("astronaut", "coffee")]
    rgb = np.stack([squash.resize_rgb(p, 32) for p in photos])
    seen = np.stack([color.network_lightness(squash.resize_rgb(p, 32)) for p in photos])
    batch = {"rgb": rgb, "affine": np.tile(np.eye(2, dtype="float32"), (2, 1, 1)),
             "embedding": np.asarray(build_embedder("tiny_random").predict_on_batch(seen)),
             "weight": np.ones((2, 1, 1), "float32")}
    model = build_training_model(cfg, 1000, 32)
    # The reference optimiser (RMSprop 1e-3) and loss (MSE on ab, the task's compute_loss).
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3))
    first = float(model.evaluate(batch, verbose=0, batch_size=2))
    target = color.network_ab(rgb)  # identity warp: the loss is plain MSE on the photos' ab
    np.testing.assert_allclose(first, np.mean(np.square(model.predict_on_batch(batch)["prediction"] - target)), rtol=1e-4)
    history = model.fit(batch, epochs=epochs, batch_size=2, verbose=0)
    return first, min(history.history["loss"][-20:])


def test_overfits_two_photos():
    first, last = overfit_two_photos()
    assert first > 1e-3  # there is something to learn
    assert last < first / 10, (first, last)


def test_the_training_task_refuses_a_loss_of_its_own():
    """The loss lives in the task (compute_loss): a loss given to compile would be silently ignored."""
    cfg = ModelConfig(encoder=((8, 2), (8, 2), (8, 2)), fusion_filters=8, decoder=(8, UP, 8, UP, 8, 8),
                      embedder="tiny_random")
    model = build_training_model(cfg, 1000, 16)
    with pytest.raises(ValueError, match="without one"):
        model.compile(optimizer="adam", loss="mse")
    model.compile(optimizer="adam")
    assert model.loss is None


def test_the_training_tasks_loss_weighs_each_photo():
    """Padding (weight 0) adds nothing, and the sum is divided by the whole batch's cells, as Keras' sample
    weights do: the loss of [real, padding] is half the real photo's own MSE."""
    keras.utils.set_random_seed(1)
    cfg = ModelConfig(encoder=((8, 2), (8, 2), (8, 2)), fusion_filters=8, decoder=(8, UP, 8, UP, 8, 8),
                      embedder="tiny_random")
    model = build_training_model(cfg, 1000, 16)
    model.compile(optimizer="adam")
    rng = np.random.default_rng(2)
    batch = {"rgb": rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8),
             "affine": np.tile(np.eye(2, dtype="float32"), (2, 1, 1)),
             "embedding": rng.normal(size=(2, 1000)).astype("float32"),
             "weight": np.array([1.0, 0.0], "float32").reshape(2, 1, 1)}
    out = model.predict_on_batch(batch)
    real = np.mean(np.square(out["prediction"][0] - out["target"][0]))
    loss = float(model.evaluate(batch, verbose=0, batch_size=2))
    assert loss == pytest.approx(real / 2, rel=1e-4)
