"""Where a recorded track's frames go on the story's timeline, and which are kept (pure).

Times are seconds on the recording's clock (the recorder picks t=0: the first
arrival of any track, less what the receiver held that frame back). A track keeps
its sender's RTP spacing: a frame's place is its pts minus the track's first pts,
plus the track's `offset_s`, when the track's first frame was sent as far as the
receiver can tell (aiortc does no RTCP sender-report lip sync, so these estimated
send times are what align audio and video).

The receiver holds frames back: aiortc 1.16's jitter buffer hands out a video frame
when the first packet of the next frame arrives, and an audio frame when the 4th
frame after it arrives (`rtcrtpreceiver.py`: `JitterBuffer(capacity=16,
prefetch=4)` for audio; `jitterbuffer.py` completes a frame on a timestamp change).
So when frame k comes out at time r, frame k + `hold_frames` had been sent by r:
the track's RTP 0 was sent at `r - rtp(k + hold_frames)` at the latest, and
`origin` is the least such bound over every frame (and every frame's own
`arrival - rtp`). `offset_s` is set once, from the first such pair (before it,
from the first arrival less `hold_frames` nominal frame times); never before 0.
A pair spanning more than 1.5 x the smallest step seen (frames lost or dropped by
the decoder in between) is not used: it would put the sender's clock too late.

The stop is a point in arrival time (`end_at`). `lead_s = offset_s - origin` is
how far the track is placed behind what was learnt since (0 in steady state; a
sender catching up after a stall, or a start before t=0, makes it grow): the
frames sent before the stop are those placed before `end_at + lead_s`. A frame
that arrives late (a backlog on a busy machine) keeps its place and is still
"before". The transport delay stays unknown: a frame sent less than that (a few ms
on a LAN) before the stop counts as sent after it. Without the hold, the frames
of the last `hold_frames` frame times before a stop (200 ms at 5 fps, 80 ms of
audio) would count as sent after it.

The same steps tell when a track has delivered everything sent before the stop
(`is_last`): a frame whose successor, at the smallest step seen, would already be
at or past the stop. So a stop need not wait for the first frame after it to come
out of the jitter buffer (at 5 fps up to 2 frame times later).
"""

from __future__ import annotations

import math
from collections import deque
from enum import Enum
from fractions import Fraction

MAX_FRAME_S = 0.25  # the longest a video frame is assumed to last when estimating the end
PAIR_SLACK = 1.5  # a held/releasing pair counts when its step is within this x the smallest


class Verdict(Enum):
    """What to do with a frame: record it, skip it (frame-rate cap), or end the track."""

    KEEP = "keep"
    SKIP = "skip"
    END = "end"  # at or past the stop or the cap: this and every later frame are not recorded


class TrackTimeline:
    """One track's clock and keep rules.

    `min_gap_s`: a frame closer than this to the previous kept one is skipped
    (0: none is). `nominal_s`: a video frame's assumed length when nothing else tells.
    `hold_frames`: how many later frames the receiver waits for before it hands out a
    frame (aiortc: 1 for video, 4 for audio; 0: frames are handed out on arrival).
    """

    def __init__(
        self, *, min_gap_s: float = 0.0, nominal_s: float = 1 / 30, hold_frames: int = 0
    ) -> None:
        self.min_gap_s, self.nominal_s = min_gap_s, nominal_s
        self.hold_frames = hold_frames
        self.first_pts: int | None = None
        self.offset_s = 0.0
        self._origin_s = math.inf  # latest possible send time of RTP 0, best bound so far
        self._settled = hold_frames == 0  # offset_s set from a held/releasing pair
        self._recent: deque[tuple[float, float]] = deque(maxlen=max(1, hold_frames))
        self._min_step_s: float | None = None  # smallest per-frame step of a held pair
        self.latest_at: float | None = None  # start of the latest frame placed
        self.last_at: float | None = None  # start of the latest kept frame
        self.end_s = 0.0  # where the latest kept frame ends
        self.skipped = 0

    def hold_s(self, length_s: float | None = None) -> float:
        """How long the receiver holds a frame back, assuming frames of `length_s`
        (None: `nominal_s`)."""
        return self.hold_frames * (length_s or self.nominal_s)

    @property
    def lead_s(self) -> float:
        """How far behind its best-known send time the track is placed (>= 0)."""
        return max(0.0, self.offset_s - self._origin_s) if self.first_pts is not None else 0.0

    def place(
        self,
        pts: int | None,
        time_base: Fraction | None,
        arrival_s: float,
        length_s: float | None = None,
    ) -> float:
        """The start of a frame with `pts` x `time_base` that came out at `arrival_s`.

        `length_s`: the frame's own length when known (audio), for the first guess.
        """
        if pts is None or time_base is None:
            return arrival_s
        if self.first_pts is None:
            self.first_pts = pts
            self.offset_s = max(0.0, arrival_s - self.hold_s(length_s))
        rtp_s = float((pts - self.first_pts) * time_base)
        self._origin_s = min(self._origin_s, arrival_s - rtp_s)
        self._bound_by_release(rtp_s, arrival_s)
        self.latest_at = at = rtp_s + self.offset_s
        return at

    def _bound_by_release(self, rtp_s: float, arrival_s: float) -> None:
        """The frame `hold_frames` before this one came out once this one was sent."""
        if not self.hold_frames:
            return
        if len(self._recent) == self.hold_frames:
            held_rtp_s, released_s = self._recent[0]
            step = (rtp_s - held_rtp_s) / self.hold_frames
            if step > 0:
                self._min_step_s = smallest = min(step, self._min_step_s or step)
                if step <= PAIR_SLACK * smallest:
                    self._origin_s = min(self._origin_s, released_s - rtp_s)
                    if not self._settled:
                        self.offset_s, self._settled = max(0.0, self._origin_s), True
        self._recent.append((rtp_s, arrival_s))

    def cut_s(self, end_at: float) -> float:
        """The stop point `end_at` (arrival time) on this track's timeline."""
        return end_at + self.lead_s

    def is_last(self, at: float, end_at: float | None) -> bool:
        """True when a frame placed at `at` is the last one sent before the stop `end_at`:
        the next frame, however soon it comes (the smallest step seen), is at or after it."""
        if end_at is None or self._min_step_s is None:
            return False
        return at + self._min_step_s >= self.cut_s(end_at)

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
