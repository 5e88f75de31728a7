"""Training: the LightningModule, optimizers, EMA, callbacks and the ``train`` CLI.

The metrics it validates with live in ``perception.evaluation`` (no Lightning there).
"""
