"""Fine-tuning, evaluation and tracking of adrisk models (saves artifacts through ``model``)."""
