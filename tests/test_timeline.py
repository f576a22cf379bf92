"""TrackTimeline: placing frames on the story's timeline and the stop/cap/frame-rate rules."""

from __future__ import annotations

from fractions import Fraction

import pytest

from server.live.timeline import MAX_FRAME_S, TrackTimeline, Verdict

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


def held(timeline: TrackTimeline, sent: list[float], hold: int, latency_s: float) -> list[float]:
    """Place frames sent at `sent` (seconds, the sender's clock = arrival clock) as aiortc
    hands them out: frame k once frame k + `hold` has arrived (`latency_s` later)."""
    return [
        timeline.place(round(sent[k] * 90_000), VIDEO, sent[k + hold] + latency_s)
        for k in range(len(sent) - hold)
    ]


@pytest.mark.parametrize("fps", [5, 30, 60])
def test_the_stop_falls_between_the_frames_sent_before_and_after_it_despite_the_hold(
    fps: int,
) -> None:
    sent = [k / fps for k in range(4 * fps)]
    stop = 3 + 0.5 / fps  # half-way between two frames
    line = TrackTimeline(hold_frames=1)
    places = held(line, sent, hold=1, latency_s=0.003)  # transport: loopback-like
    verdicts = [line.decide(at, 0.001, end_at=stop, cap_s=15) for at in places]
    assert places[fps] == pytest.approx(sent[fps] + 0.003)  # its send time, not its release
    before = sum(1 for s in sent if s < stop)
    assert verdicts[:before] == [Verdict.KEEP] * before
    assert verdicts[before] is Verdict.END
    unaware = TrackTimeline()  # not knowing the hold: the last frame before the stop is lost
    places = held(unaware, sent, hold=1, latency_s=0.003)
    assert unaware.decide(places[before - 1], 0.001, end_at=stop, cap_s=15) is Verdict.END


def test_audio_held_four_frames_keeps_its_last_80_ms() -> None:
    sent = [k * 0.02 for k in range(100)]
    line = TrackTimeline(hold_frames=4)
    places = [line.place(k * 960, AUDIO, sent[k + 4] + 0.005) for k in range(96)]
    verdicts = [line.decide(at, 0.02, end_at=1.01, cap_s=15) for at in places]
    assert verdicts.index(Verdict.END) == 51  # frames 0..50 were sent before 1.01 s
    # placed at their send time (+ the 5 ms transport), not 80 ms later as they came out
    assert places[10] == pytest.approx(sent[10] + 0.005) and line.lead_s == pytest.approx(0)


def test_a_pair_with_a_lost_frame_between_does_not_move_the_stop() -> None:
    sent = [k / 30 for k in range(10)]
    line = TrackTimeline(hold_frames=1)
    arrivals = [sent[k + 1] + 0.01 for k in range(9)]  # frame k out when k+1 arrives
    for k in range(9):
        if k != 5:  # frame 5 was decoded badly and never handed out
            line.place(round(sent[k] * 90_000), VIDEO, arrivals[k])
    assert line.offset_s == pytest.approx(0.01)  # frame 0 sent at 0, seen 10 ms later
    assert line.lead_s == pytest.approx(0, abs=1e-9)  # the 4 -> 6 pair would say -23 ms


def test_the_last_frame_before_the_stop_is_known_when_it_comes_out() -> None:
    sent = [k / 5 for k in range(20)]
    line = TrackTimeline(hold_frames=1)
    places = held(line, sent, hold=1, latency_s=0.003)
    stop = 3.1  # frame 15 (3.0 s) is the last before it
    assert not line.is_last(places[14], stop)
    assert line.is_last(places[15], stop)
    assert not TrackTimeline().is_last(places[15], stop)  # no steps known: wait for one after
    assert not line.is_last(places[15], None)
