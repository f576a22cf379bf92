"""TrackTimeline: placing frames on the story's timeline and the stop/cap/frame-rate rules."""

from __future__ import annotations

from fractions import Fraction

import pytest

from server.timeline import MAX_FRAME_S, TrackTimeline, Verdict

VIDEO = Fraction(1, 90_000)
AUDIO = Fraction(1, 48_000)


def test_frames_keep_the_senders_spacing_from_the_first_arrival() -> None:
    line = TrackTimeline()
    assert line.place(90_000, VIDEO, 0.25) == 0.25  # the first frame: its arrival
    assert line.place(90_000 + 3_000, VIDEO, 0.40) == pytest.approx(0.25 + 1 / 30)  # late
    assert line.place(None, None, 0.9) == 0.9  # no timestamp: arrival
    assert line.lead_s == 0.0  # nothing was placed ahead of its arrival


def test_a_burst_after_a_stall_moves_the_stop_point() -> None:
    line = TrackTimeline()
    line.place(0, AUDIO, 0.0)
    for i in range(1, 6):  # 5 frames of 20 ms arrive together at 0.01 s
        line.place(i * 960, AUDIO, 0.01)
    assert line.lead_s == pytest.approx(0.09)
    assert line.cut_s(2.0) == pytest.approx(2.09)


def test_stop_and_cap_end_the_track_before_and_after_stay_apart() -> None:
    line = TrackTimeline()
    assert line.decide(1.0, 0.02, end_at=None, cap_s=15) is Verdict.KEEP
    assert line.decide(1.99, 0.02, end_at=2.0, cap_s=15) is Verdict.KEEP  # sent before
    assert line.decide(2.0, 0.02, end_at=2.0, cap_s=15) is Verdict.END  # sent after
    assert line.decide(15.0, 0.02, end_at=None, cap_s=15) is Verdict.END
    assert line.end_s == pytest.approx(2.01)
    assert line.end(2.0) == pytest.approx(2.0) and line.end(None) == pytest.approx(2.01)


def test_video_above_the_rate_cap_is_skipped_and_counted() -> None:
    line = TrackTimeline(min_gap_s=0.75 / 30)
    kept = [line.decide(i / 60, None, end_at=None, cap_s=15) for i in range(60)]
    assert kept.count(Verdict.KEEP) == 30 and line.skipped == 30
    jittery = TrackTimeline(min_gap_s=0.75 / 30)  # 30 fps stamped 3 ms early or late: all kept
    times = [i / 30 + (0.003 if i % 2 else -0.003) for i in range(30)]
    assert all(jittery.decide(t, None, end_at=None, cap_s=15) is Verdict.KEEP for t in times)


def test_a_video_frame_lasts_until_the_next_within_bounds() -> None:
    line = TrackTimeline()
    line.decide(0.0, None, end_at=None, cap_s=15)
    assert line.end_s == pytest.approx(1 / 30)  # nothing known yet: nominal
    line.decide(0.2, None, end_at=None, cap_s=15)  # 5 fps
    assert line.end_s == pytest.approx(0.4)
    line.decide(3.0, None, end_at=None, cap_s=15)  # after a stall: bounded
    assert line.end_s == pytest.approx(3.0 + MAX_FRAME_S)
