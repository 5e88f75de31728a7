"""perception: multi-task driving-scene perception (detection, lanes, metric depth).

Public API only; everything heavy is imported when first used.
"""

__version__ = "0.1.0"
