"""Training options kept as experiments: off by default, outside the core path, each behind the loop's
one extension point (``training.loop.FineTuner.compute_loss``)."""
