"""The clock-shift run of `.ci/run` really moves the clock (otherwise it would test nothing)."""

from __future__ import annotations

import time

import pytest


@pytest.mark.clock
def test_clock_shift_moves_every_in_process_clock(request):
    import time_machine

    days = request.config.getoption("--clock-shift-days")
    if not days:
        assert not time_machine.escape_hatch.is_travelling()
        return
    real = time_machine.escape_hatch.time.time()
    assert abs(time.time() - (real + days * 86400)) < 600
