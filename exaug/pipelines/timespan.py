"""Which part of a video to edit, and how strongly at each moment.

``exaug video --start/--end`` edits one segment; ``--ramp`` eases the edit in and out over that
many seconds so an expression appears and fades the way a real one does instead of switching on in
one frame. The ease is a raised cosine (zero slope at both ends of the ramp, so neither the start
nor the end of the change is a visible kink). A ramp applies only at an end the user set: a
segment that runs from the clip's first frame or to its last keeps full strength there, since a
clip that starts happy should not start by turning happy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from exaug.errors import ExaugError

_TIMESTAMP = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)$")


def parse_time(text: str, option: str) -> float:
    """Seconds from ``12.5``, ``01:02.5`` (minutes:seconds) or ``00:01:02.5`` (hours:minutes:seconds)."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        match = _TIMESTAMP.match(text)
        if match is None:
            raise ExaugError(f"{option}: {text!r} is not a time (use seconds, MM:SS or HH:MM:SS.s)") from None
        hours, minutes, rest = match.groups()
        if (hours is not None and int(minutes) >= 60) or float(rest) >= 60:
            raise ExaugError(f"{option}: {text!r} is not a time (minutes and seconds go up to 59)")
        seconds = int(hours or 0) * 3600 + int(minutes) * 60 + float(rest)
    if not math.isfinite(seconds) or seconds < 0:
        raise ExaugError(f"{option}: {text!r} is not a time (it must be 0 or more seconds)")
    return seconds


@dataclass(frozen=True)
class TimeSpan:
    """The edited segment in seconds from the first frame: ``start`` <= t < ``end`` (None: to the end)."""

    start: float | None = None
    end: float | None = None
    ramp: float = 0.0

    def __post_init__(self) -> None:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ExaugError(f"--end {self.end:g} s must come after --start {self.start:g} s")
        if not self.ramp >= 0:
            raise ExaugError(f"--ramp {self.ramp:g}: must be 0 or more seconds")

    @property
    def whole(self) -> bool:
        """Whether every frame is edited at full strength."""
        return self.start is None and self.end is None

    def weights(self, times: np.ndarray) -> np.ndarray:
        """How strongly to edit the frames at ``times`` (seconds from the first frame): 0 outside
        the segment, 1 inside it, raised-cosine ramps of ``ramp`` seconds at the set ends."""
        times = np.asarray(times, np.float64)
        weight = np.ones_like(times)
        if self.start is not None:
            weight = np.minimum(weight, _ease(times - self.start, self.ramp))
        if self.end is not None:
            weight = np.minimum(weight, np.where(times < self.end, _ease(self.end - times, self.ramp), 0.0))
        return weight


def _ease(since: np.ndarray, ramp: float) -> np.ndarray:
    """0 before the edge (``since`` < 0), rising as a raised cosine to 1 after ``ramp`` seconds."""
    if ramp <= 0:
        return (since >= 0).astype(np.float64)
    phase = np.clip(since / ramp, 0.0, 1.0)
    return np.where(since >= 0, 0.5 - 0.5 * np.cos(np.pi * phase), 0.0)
