"""Counter increase over a window: new events count, old counts and resets do not mislead."""

from __future__ import annotations

from reliability.detect.counters import CounterWindow


def test_increase_over_the_window_then_back_to_zero_once_it_slides_past():
    window = CounterWindow(300.0)
    assert window.observe(("a",), 0.0, 2.0, from_zero=False) == 0.0  # a baseline, not news
    assert window.observe(("a",), 60.0, 3.0, from_zero=False) == 1.0
    assert window.observe(("a",), 300.0, 3.0, from_zero=False) == 1.0
    assert window.observe(("a",), 361.0, 3.0, from_zero=False) == 0.0


def test_a_series_born_at_its_first_event_counts_that_event():
    window = CounterWindow(300.0)
    assert window.observe(("xid-79",), 100.0, 1.0, from_zero=True) == 1.0


def test_a_counter_reset_is_a_fresh_start_never_a_negative_increase():
    window = CounterWindow(300.0)
    window.observe(("a",), 0.0, 7.0, from_zero=False)
    assert window.observe(("a",), 15.0, 0.0, from_zero=False) == 0.0  # collector restarted
    assert window.observe(("a",), 30.0, 2.0, from_zero=False) == 2.0  # two events since


def test_history_is_bounded_when_evaluated_far_more_often_than_the_window():
    window = CounterWindow(1e9)
    for i in range(10_000):
        window.observe(("a",), float(i), float(i), from_zero=False)
    assert len(window._series[("a",)].points) <= 1024
