"""Schemathesis hooks for ``tests/serve/test_openapi.py`` (loaded through ``SCHEMATHESIS_HOOKS``).

``/v1/feedback`` refuses a ``reviewed_at`` more than a day in the future (422; a future decision
would win every later one). JSON Schema cannot bound a date-time by "now", so the published schema
says it in the field's description, and generated date-times stay in the past (relative to the time
of the run: nothing here expires).
"""

from __future__ import annotations

from datetime import datetime, timezone

import schemathesis
from hypothesis import strategies as st

_NOW = datetime.now(timezone.utc).replace(tzinfo=None)

schemathesis.openapi.format(
    "date-time",
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=_NOW, timezones=st.just(timezone.utc)).map(
        lambda d: d.isoformat()
    ),
)
