"""``python -m adrisk``: the same CLI as the ``adrisk`` console script, installed or not."""

import sys

from adrisk.cli import main

sys.exit(main())
