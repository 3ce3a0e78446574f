"""``fleet top``'s frame: rates from two samples, figures as the statuses give them."""

from __future__ import annotations

from workers.cli.top import Sample, frame, render
from workers.streams import GroupStatus


def _status(lag: int | None, dlq: int, *, estimated: bool = False) -> GroupStatus:
    return GroupStatus(
        stream="notify:delivery",
        group="notify-workers",
        length=1000,
        lag=lag,
        pending=12,
        oldest_pending_age_seconds=3.5,
        consumers=2,
        dlq_length=dlq,
        last_delivered_id="1-0",
        lag_estimated=estimated,
    )


def test_rates_are_the_difference_of_two_samples_over_their_distance() -> None:
    key = ("notify:delivery", "notify-workers")
    before = Sample(10.0, {"notify:delivery": 1000}, {key: 400}, [_status(600, 4)])
    after = Sample(12.0, {"notify:delivery": 1500}, {key: 1300}, [_status(200, 6)])
    (row,) = frame(before, after)
    assert row.rate_in == 250.0 and row.rate_out == 450.0
    assert row.lag == "200" and row.dlq == 6 and row.dlq_rate == 1.0
    assert row.pending == 12 and row.consumers == 2


def test_unknown_and_capped_figures_are_marked_not_invented() -> None:
    key = ("notify:delivery", "notify-workers")
    before = Sample(0.0, {"notify:delivery": 0}, {key: None}, [_status(None, 0)])
    after = Sample(1.0, {"notify:delivery": 0}, {key: None}, [_status(100_000, 0, estimated=True)])
    (row,) = frame(before, after)
    assert row.rate_out is None
    assert row.lag == ">=100000"
    assert render([row]).row_count == 1
