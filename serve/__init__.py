"""The serving side of adrisk: the moderation HTTP API (``adrisk serve``) and the batch scoring job
(``adrisk score``). Nothing here loads a model at import time."""
