"""Schemathesis hooks for ``tests/serve/test_openapi.py`` (loaded through ``SCHEMATHESIS_HOOKS``).

``/v1/feedback`` refuses a ``reviewed_at`` more than a few minutes ahead of the server's clock or more
than a year back (422: no clock could have shown it). JSON Schema cannot bound a date-time by "now",
so the published schema says it in the field's description, and generated date-times stay inside the
last 300 days (relative to the time of the run: nothing here expires).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import schemathesis
from hypothesis import strategies as st

_NOW = datetime.now(timezone.utc).replace(tzinfo=None)

schemathesis.openapi.format(
    "date-time",
    st.datetimes(min_value=_NOW - timedelta(days=300), max_value=_NOW, timezones=st.just(timezone.utc)).map(
        lambda d: d.isoformat()
    ),
)
