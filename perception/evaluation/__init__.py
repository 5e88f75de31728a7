"""The SPEC metrics (METRICS.md) and ``perception eval``: pure torch / numpy, no Lightning.

One layer below training, so validation, ``perception eval``, the demo, the bench and the
studies score a model with the same code. ``metrics`` holds the evaluators, ``coco`` the
detection metrics, ``distributed`` merges evaluators across processes (DDP validation),
``evaluate`` scores weights on a dataset.
"""
