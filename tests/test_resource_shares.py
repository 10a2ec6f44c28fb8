"""Dividing a shared counter among the jobs that overlap in time."""
import pytest

from metering.shares import SharedCounter


def test_one_job_alone_gets_the_whole_counter():
    counter = SharedCounter()
    counter.join("a", 10.0, at=0.0)
    share = counter.leave("a", 13.0, at=2.0)
    assert share is not None
    assert share.amount == pytest.approx(3.0) and share.max_sharing == 1 and share.mean_sharing(2.0) == 1.0


def test_overlapping_jobs_split_each_interval_and_add_up_to_the_counter():
    # Counter readings: a joins at 0 (value 0), b at 1 (value 2), c at 2 (value 5), a leaves at 3 (value 11),
    # b at 4 (value 13), c at 6 (value 15).
    counter = SharedCounter()
    counter.join("a", 0.0, at=0.0)
    counter.join("b", 2.0, at=1.0)
    counter.join("c", 5.0, at=2.0)
    a = counter.leave("a", 11.0, at=3.0)
    b = counter.leave("b", 13.0, at=4.0)
    c = counter.leave("c", 15.0, at=6.0)
    assert a is not None and b is not None and c is not None
    # [0,1]: 2 to a; [1,2]: 3 split a,b; [2,3]: 6 split a,b,c; [3,4]: 2 split b,c; [4,6]: 2 to c.
    assert a.amount == pytest.approx(2 + 1.5 + 2)
    assert b.amount == pytest.approx(1.5 + 2 + 1)
    assert c.amount == pytest.approx(2 + 1 + 2)
    assert a.amount + b.amount + c.amount == pytest.approx(15.0)
    assert (a.max_sharing, b.max_sharing, c.max_sharing) == (3, 3, 3)
    assert a.mean_sharing(3.0) == pytest.approx((1 * 1 + 2 * 1 + 3 * 1) / 3)


def test_a_counter_that_goes_back_or_cannot_be_read_charges_nothing_for_that_stretch():
    counter = SharedCounter()
    counter.join("a", 100.0, at=0.0)
    counter.reading(103.0, at=1.0)           # 3 to a
    counter.reading(None, at=2.0)            # the process could not be read: the stretch ends
    counter.reading(110.0, at=3.0)           # a new baseline; 103 -> 110 is charged to no one
    counter.reading(5.0, at=4.0)             # restarted: its counter began again, nothing charged
    share = counter.leave("a", 7.0, at=5.0)
    assert share is not None
    assert share.amount == pytest.approx(3.0 + 2.0)
    assert len(counter) == 0
