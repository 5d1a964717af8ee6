"""The whole of `colorize` as one Keras model, for export: a photo in, the colorized photo out.

    build_photo_model(network, size, resolution): image uint8 (B, H, W, 3), any H, W -> uint8 RGB (B, H, W, 3)

`network` is build_model's (L (B, S, S, 1) and L_embedder (B, R, R, 1) in [-1, 1] -> ab (B, S, S, 2) in
[-1, 1]); around it, in keras.ops, the steps `colorize.Colorizer` takes in NumPy and Pillow:
  1. the Preprocessor (model/preprocessor.py), training's own: the photo squashed to S x S and to the
     embedder's R x R as data/squash.py does with Pillow (model/resize.py: Pillow's arithmetic as matrix
     products), and the L of each (color.network_lightness);
  2. the network; ab upsampled to (H, W) as join.UpsampledAB does (Pillow's bilinear), in Lab units;
  3. joined with the photo's own full-resolution L and fitted into the sRGB gamut (join.fit_colours).
So a server needs no koalarization code: uint8 in, uint8 out, the same photo `colorize` writes to within
a level (tests/test_export.py).

Memory: the whole photo's work arrays at once (float64 for the exact resize), where `colorize` works a
band at a time: a 12 MP photo peaks at about 2.5 GB of process memory against 1.0 GB (docs/colorize.md).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from koalarization import color
from koalarization.inference.join import fit_colours
from koalarization.model import resize
from koalarization.model.preprocessor import Preprocessor


@keras.saving.register_keras_serializable(package="koalarization")
class PhotoColorizer(layers.Layer):
    """image uint8 (B, H, W, 3) -> uint8 RGB (B, H, W, 3) through `network` at S = size, R = resolution."""

    def __init__(self, network: keras.Model, size: int, resolution: int, **kwargs):
        super().__init__(**kwargs)
        self.network, self.size, self.resolution = network, int(size), int(resolution)
        self.preprocessor = Preprocessor(self.size, self.resolution, name="preprocess")

    def call(self, image):
        height, width = ops.shape(image)[1], ops.shape(image)[2]
        ab = self.network(self.preprocessor(image))
        ab = resize.resize_float(ops.cast(ab, "float32"), height, width) * color.AB_SCALE
        return ops.stack(fit_colours(ops.cast(image, "int32"), ab[..., 0], ab[..., 1]), axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, image):
        return keras.KerasTensor(image.shape, dtype="uint8")


def build_photo_model(network: keras.Model, size: int, resolution: int) -> keras.Model:
    """A functional model "image" uint8 (B, H, W, 3) -> uint8 RGB (B, H, W, 3) around `network`."""
    image = keras.Input((None, None, 3), dtype="uint8", name="image")
    return keras.Model(image, PhotoColorizer(network, size, resolution, name="colorize")(image),
                       name="koalarization_photo")
