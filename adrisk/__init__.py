"""The composition root: the ``adrisk`` command line (``adrisk.cli``) wires the three packages
``training`` (builds models), ``model`` (the artifact and the predictor: the seam) and ``serve`` (the
HTTP API and batch jobs). It holds no logic of its own."""
