"""koalarization: Deep Koalarization (Baldassarre et al. 2017) on Keras 3.

Importing the package is cheap: Keras/TensorFlow are imported only by the modules that need them.
"""

__version__ = "0.1.0"
