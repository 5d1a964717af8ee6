"""The model: the Deep Koalarization network (network.py), the frozen embedders that give it its global
feature (embedders.py, with the offline EfficientNet-Lite port in efficientnet_lite.py and torch_legacy.py),
the photo-to-inputs layer that training and export share (preprocessor.py, with resize.py), and the training
model (task.py), whose compute_loss is Keras' MSE or distribution.BinLoss. Keras layers and keras.ops
only: every backend runs it. Depends on config and color; nothing here reads photos or files of a run."""
