"""Looking inside a trained model: which features each backbone stage responds to.

``features`` (the strongest feature maps of a low, middle and high stage for one image).
"""

from perception.analysis.features import StageMaps, feature_figure, stage_maps

__all__ = ["StageMaps", "feature_figure", "stage_maps"]
