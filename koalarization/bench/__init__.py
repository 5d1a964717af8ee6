"""The measuring kit, beside the product: the input pipeline and the training step (pipeline.py,
train_step.py, flops.py, memory.py), the reference pipeline rebuilt for comparison (reference_pipeline.py),
colorize latency (latency.py) and an embedder's ImageNet accuracy and speed (embedder_check.py). Only the
CLI imports it; nothing in the product imports it."""
