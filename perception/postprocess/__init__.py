"""Decoding of raw ``HeadOutputs``: every threshold, NMS and resize lives here (rule 1).

``detection``: scores, boxes, NMS in network pixels, then back to source pixels.
``dense``: lane / drivable probabilities and metric depth, then back to source size.
"""

from perception.postprocess.dense import dense_to_source, depth_metres, seg_probabilities
from perception.postprocess.detection import detections_to_source, postprocess_detections

__all__ = [
    "dense_to_source",
    "depth_metres",
    "detections_to_source",
    "postprocess_detections",
    "seg_probabilities",
]
