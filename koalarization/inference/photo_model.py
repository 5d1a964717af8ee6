"""The whole of `colorize` as one Keras model, for export: a photo in, the colorized photo out.

    build_photo_model(network, size, resolution): image uint8 (B, H, W, 3), any H, W -> uint8 RGB (B, H, W, 3)

`network` is build_model's (L (B, S, S, 1) and L_embedder (B, R, R, 1) in [-1, 1] -> ab (B, S, S, 2) in
[-1, 1]); around it, in keras.ops, the steps `colorize.Colorizer` takes in NumPy and Pillow:
  1. squash the photo to S x S and to the embedder's R x R as `squash.resize_rgb_each` does with Pillow
     (inference/resize.py: Pillow's arithmetic as matrix products);
  2. L of each (color.lab_f_of_luminance, the one L formula of the pixel kernels), scaled to [-1, 1];
  3. the network; ab upsampled to (H, W) as colorize.UpsampledAB does (Pillow's bilinear), in Lab units;
  4. joined with the photo's own full-resolution L and fitted into the sRGB gamut (colorize.fit_colours).
So a server needs no koalarization code: uint8 in, uint8 out, the same photo `colorize` writes to within
a level (tests/test_export.py).

Memory: the whole photo's work arrays at once (float64 for the exact resize), where `colorize` works a
band at a time: a 12 MP photo peaks at about 2.5 GB of process memory against 1.0 GB (docs/colorize.md).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from koalarization import color
from koalarization.data import squash
from koalarization.inference import resize
from koalarization.inference.colorize import fit_colours


@keras.saving.register_keras_serializable(package="koalarization")
class PhotoColorizer(layers.Layer):
    """image uint8 (B, H, W, 3) -> uint8 RGB (B, H, W, 3) through `network` at S = size, R = resolution."""

    def __init__(self, network: keras.Model, size: int, resolution: int, **kwargs):
        super().__init__(**kwargs)
        self.network, self.size, self.resolution = network, int(size), int(resolution)

    @staticmethod
    def _scaled_lightness(rgb_int32):
        """uint8-valued int32 RGB (..., 3) -> L scaled (..., 1) float32 in [-1, 1]."""
        return color.network_lightness(rgb_int32, xp=ops)

    def _squashed(self, rgb, side: int):
        return ops.cast(resize.squash_uint8(rgb, side, squash.REDUCING_GAP), "int32")

    def call(self, image):
        height, width = ops.shape(image)[1], ops.shape(image)[2]
        rgb = ops.cast(image, "float64")  # exact integer sums in the fixed-point resize
        ab = self.network({"L": self._scaled_lightness(self._squashed(rgb, self.size)),
                           "L_embedder": self._scaled_lightness(self._squashed(rgb, self.resolution))})
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
