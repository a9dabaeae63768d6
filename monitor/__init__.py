"""Drift monitoring: is a window of ads still like the data the model was validated on, how well is the
model doing on it without labels, and is a retrain worth it (``adrisk monitor``; docs/monitoring.md).

It composes the jobs below it (reading and scoring files, the labelled-data reader and its
fingerprints) and never imports ``serve`` (moderator feedback comes as an exported file).
"""
