"""The per-minute ring of mlfleet.metrics, on a clock the test moves."""

from __future__ import annotations

import re

from mlfleet.console.charts import endpoint_charts, server_charts
from mlfleet.metrics import MINUTES, Recorder

T0 = 1_700_000_040.0  # the start of a minute


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def test_counts_land_in_the_current_minute_and_roll_over() -> None:
    clock = Clock()
    recorder = Recorder(clock)
    recorder.request("a", 200, 0.010)
    recorder.request("a", 503, 0.020)
    recorder.throttled("a")
    clock.now += 59.9
    recorder.request("a", 404, 0.010)
    clock.now += 0.2  # the next minute
    recorder.request("a", 200, 0.010)

    window = recorder.window("a")
    assert len(window) == MINUTES
    before, current = window[-2], window[-1]
    assert (before.requests, before.throttled, before.errors) == (3, 1, 1)
    assert before.start == T0
    assert (current.requests, current.throttled, current.errors) == (1, 0, 0)
    assert current.start == T0 + 60
    assert all(m.requests == 0 and m.p50 is None for m in window[:-2])


def test_the_window_is_the_last_sixty_minutes_and_old_slots_are_reused() -> None:
    clock = Clock()
    recorder = Recorder(clock)
    recorder.request("a", 200, 0.5)
    clock.now += 59 * 60
    assert recorder.window("a")[0].requests == 1  # 59 minutes ago: still in the window
    clock.now += 60
    assert sum(m.requests for m in recorder.window("a")) == 0
    # The slot of an hour ago now holds this minute, counted from zero.
    recorder.request("a", 200, 0.5)
    assert [m.requests for m in recorder.window("a")][-1] == 1
    assert sum(m.requests for m in recorder.window("a")) == 1
    starts = [m.start for m in recorder.window("a")]
    assert starts == [T0 + 60 * (i + 1) for i in range(MINUTES)]


def test_keys_are_separate_and_an_unknown_key_is_an_empty_hour() -> None:
    recorder = Recorder(Clock())
    recorder.request("a", 200, 0.01)
    assert recorder.window("a")[-1].requests == 1
    assert recorder.window("b")[-1].requests == 0
    assert len(recorder.window("b")) == MINUTES


def test_percentiles_come_from_the_histogram_within_one_bucket() -> None:
    recorder = Recorder(Clock())
    # 98 fast requests of ~4 ms and 2 slow ones of ~0.8 s.
    for _ in range(98):
        recorder.request("a", 200, 0.004)
    for _ in range(2):
        recorder.request("a", 200, 0.8)
    minute = recorder.window("a")[-1]
    assert minute.p50 is not None and 0.004 <= minute.p50 <= 0.008
    assert minute.p99 is not None and 0.8 <= minute.p99 <= 1.6


def test_a_lone_request_reads_exactly_and_beyond_the_last_bucket_too() -> None:
    recorder = Recorder(Clock())
    recorder.request("a", 200, 0.0123)
    recorder.request("b", 200, 400.0)
    assert recorder.window("a")[-1].p99 == 0.0123
    assert recorder.window("b")[-1].p50 == 400.0


def test_charts_say_their_figures_in_words_and_carry_no_style_attributes() -> None:
    clock = Clock()
    recorder = Recorder(clock)
    for _ in range(5):
        recorder.request("a", 200, 0.02)
        recorder.throttled("a")
    clock.now += 60
    recorder.request("a", 500, 0.04)

    requests, latency = (str(chart) for chart in server_charts(recorder.window("a")))
    label = re.search(r'aria-label="([^"]+)"', requests)
    assert label is not None
    assert "Requests: 6 in all, at most 5 in a minute, 1 in the current minute." in label[1]
    assert "Throttled: 5 in all" in label[1]
    assert "Errors (5xx): 1 in all" in label[1]
    assert 'role="img"' in requests and "<title>Requests per minute</title>" in requests
    assert "style=" not in requests + latency
    assert "p50: highest 40 ms, 40 ms in the latest minute with requests." in latency
    invocations = str(endpoint_charts(recorder.window("a"))[1])
    assert "Invocations: 6 in all" in invocations


def test_a_quiet_hour_is_said_so() -> None:
    requests, latency = (str(chart) for chart in server_charts(Recorder(Clock()).window("x")))
    assert "Requests: 0 in all" in requests
    assert "p99: no requests." in latency
    assert "Nothing in the last 60 minutes." in latency
