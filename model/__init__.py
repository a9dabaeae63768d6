"""The seam between training and serving: the model artifact and the predictor.

``training`` saves artifacts through this package and ``serve`` loads them through it; neither
imports the other.
"""

from model.schema import LabelSchema, ProblemType

__all__ = ["LabelSchema", "ProblemType"]
