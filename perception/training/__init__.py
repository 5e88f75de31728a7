"""Training and evaluation: the LightningModule, optimizers and the SPEC metrics.

``training.metrics`` is pure torch/numpy so ``perception eval`` runs without Lightning.
"""
