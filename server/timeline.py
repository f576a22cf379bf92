"""Where a recorded track's frames go on the story's timeline, and which are kept (pure).

Times are seconds from t=0, the arrival of the recording's first frame (any track).
A track keeps its sender's RTP spacing: a frame's place is its pts minus the
track's first pts, plus the arrival time of the track's first frame (aiortc does
no RTCP sender-report lip sync, so first arrivals align the tracks).

The stop is a point in arrival time (`end_at`). A frame placed at `at` was sent
at `at - lead_s` at the earliest, where `lead_s` is the most any frame of the
track was placed ahead of its own arrival (0 unless the first frame came late,
e.g. a sender catching up after a stall sends a burst): so the track's frames
before the stop are those placed before `end_at + lead_s`. A frame that arrives
late (a backlog on a busy machine) keeps its place and is still "before".
"""

from __future__ import annotations

from enum import Enum
from fractions import Fraction

MAX_FRAME_S = 0.25  # the longest a video frame is assumed to last when estimating the end


class Verdict(Enum):
    """What to do with a frame: record it, skip it (frame-rate cap), or end the track."""

    KEEP = "keep"
    SKIP = "skip"
    END = "end"  # at or past the stop or the cap: this and every later frame are not recorded


class TrackTimeline:
    """One track's clock and keep rules.

    `min_gap_s`: a frame closer than this to the previous kept one is skipped
    (0: none is). `nominal_s`: a video frame's assumed length when nothing else tells.
    """

    def __init__(self, *, min_gap_s: float = 0.0, nominal_s: float = 1 / 30) -> None:
        self.min_gap_s, self.nominal_s = min_gap_s, nominal_s
        self.first_pts: int | None = None
        self.offset_s = 0.0
        self.lead_s = 0.0
        self.last_at: float | None = None  # start of the latest kept frame
        self.end_s = 0.0  # where the latest kept frame ends
        self.skipped = 0

    def place(self, pts: int | None, time_base: Fraction | None, arrival_s: float) -> float:
        """The start of a frame with `pts` x `time_base` that arrived at `arrival_s`."""
        if pts is None or time_base is None:
            return arrival_s
        if self.first_pts is None:
            self.first_pts, self.offset_s = pts, arrival_s
        at = float((pts - self.first_pts) * time_base) + self.offset_s
        self.lead_s = max(self.lead_s, at - arrival_s)
        return at

    def cut_s(self, end_at: float) -> float:
        """The stop point `end_at` (arrival time) on this track's timeline."""
        return end_at + self.lead_s

    def decide(
        self, at: float, length_s: float | None, *, end_at: float | None, cap_s: float
    ) -> Verdict:
        """Keep, skip or end for a frame placed at `at`; a kept frame moves `end_s`.

        `length_s`: the frame's own length (audio: samples / rate), None for video
        (then the gap to the previous kept frame, within nominal..MAX_FRAME_S).
        """
        if at >= cap_s or (end_at is not None and at >= self.cut_s(end_at)):
            return Verdict.END
        if self.last_at is not None and at - self.last_at < self.min_gap_s:
            self.skipped += 1
            return Verdict.SKIP
        if length_s is None:
            gap = self.nominal_s if self.last_at is None else at - self.last_at
            length_s = min(MAX_FRAME_S, max(self.nominal_s, gap))
        self.end_s = max(self.end_s, at + length_s)
        self.last_at = at
        return Verdict.KEEP

    def end(self, end_at: float | None) -> float:
        """Where this track's media ends: its last kept frame, but not past its stop point."""
        return self.end_s if end_at is None else min(self.end_s, self.cut_s(end_at))
