"""Who schedules, and what happens to the runs of a scheduler that stopped: leadership on its own
thread with epochs, stepping down before the lease can expire, and the pure verdict on runs
left behind (table by table)."""
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import cast

import pytest

from scheduling.leadership import Leadership, new_owner, owner_alive
from scheduling.policy import LeftRun, RunAction, left_run_verdict
from store.base import JobStore
from store.sqlite import SqliteStore


class Events:
    def __init__(self) -> None:
        self.log: list[tuple[str, str, int | str, float]] = []
        self.changed = threading.Event()

    def elected(self, name: str) -> Callable[[int], None]:
        def on_elected(epoch: int) -> None:
            self.log.append((name, "elected", epoch, time.monotonic()))
            self.changed.set()
        return on_elected

    def lost(self, name: str) -> Callable[[str], None]:
        def on_lost(reason: str) -> None:
            self.log.append((name, "lost", reason, time.monotonic()))
            self.changed.set()
        return on_lost


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_one_leads_the_other_takes_over_with_a_new_epoch_when_it_stops():
    store, events = SqliteStore.in_memory(), Events()
    a = Leadership(store, "a", events.elected("a"), events.lost("a"), ttl_s=1.0, renew_s=0.1)
    b = Leadership(store, "b", events.elected("b"), events.lost("b"), ttl_s=1.0, renew_s=0.1)
    a.start()
    assert wait_for(lambda: a.leading)
    b.start()
    time.sleep(0.5)
    assert a.leading and not b.leading and a.epoch == 1
    a.stop()                                                   # steps down and lets the lease go
    assert wait_for(lambda: b.leading) and b.epoch == 2
    assert [e[:3] for e in events.log] == [("a", "elected", 1), ("a", "lost", "shutting down"), ("b", "elected", 2)]
    b.stop()
    store.close()


class Unreachable:
    """A store that answers the first lease call, then stops answering."""

    def __init__(self):
        self.store = SqliteStore.in_memory()
        self.calls = 0

    def acquire_lease(self, *args, **kwargs):
        self.calls += 1
        if self.calls > 1:
            raise TimeoutError("the store does not answer")
        return self.store.acquire_lease(*args, **kwargs)

    def release_lease(self, *args):
        raise TimeoutError("the store does not answer")


def test_a_leader_that_cannot_renew_steps_down_before_its_lease_could_expire():
    events = Events()
    store = Unreachable()
    # a stand-in for the two lease calls Leadership makes
    leader = Leadership(cast(JobStore, store), "a", events.elected("a"), events.lost("a"), ttl_s=1.0, renew_s=0.2)
    leader.start()
    assert wait_for(lambda: len(events.log) == 2, timeout=3)
    (_, _, _, elected_at), (_, what, reason, lost_at) = events.log
    assert what == "lost" and isinstance(reason, str) and "cannot renew" in reason
    assert lost_at - elected_at < 1.0                         # before the lease (1 s) ran out
    leader.stop()


def test_a_lease_renewed_under_another_epoch_is_lost():
    store, events = SqliteStore.in_memory(), Events()
    leader = Leadership(store, "a", events.elected("a"), events.lost("a"), ttl_s=0.3, renew_s=0.05)
    leader.start()
    assert wait_for(lambda: leader.leading)
    store.acquire_lease("scheduler", "intruder", ttl_s=0.2, now=time.time() + 5)   # as if it had expired
    assert wait_for(lambda: any(e[1] == "lost" for e in events.log))
    leader.stop()


def test_owner_alive_tells_a_dead_process_on_this_host_from_one_elsewhere():
    assert owner_alive(new_owner()) is True
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert owner_alive(f"{socket.gethostname()}:{child.pid}:{time.time():.3f}:x") is False   # gone
    here = new_owner().split(":")
    assert owner_alive(":".join([here[0], here[1], "1.000", "x"])) is False    # its pid, another start: reused
    assert owner_alive("elsewhere:123:1.0:x") is None and owner_alive(None) is None


def run(epoch=1, here=False, retired=False, alive=True, started=0.0, timeout=60.0, attempts=1):
    return LeftRun(epoch, here, retired, alive, started, timeout, attempts)


KEEP, REQUEUE, FAIL = RunAction.KEEP, RunAction.REQUEUE, RunAction.FAIL


@pytest.mark.parametrize("left, now, expected", [
    (run(epoch=2, here=True), 100.0, KEEP),                          # mine, running here
    (run(epoch=2, here=False, started=99.0), 100.0, KEEP),            # mine, just claimed: not yet started
    (run(epoch=2, here=False, started=50.0), 100.0, REQUEUE),         # mine but lost (start or record failed)
    (run(epoch=1, alive=True), 30.0, KEEP),                           # an older term may still run it
    (run(epoch=1, retired=True), 30.0, REQUEUE),                      # its term said nothing is in flight
    (run(epoch=1, alive=False), 30.0, REQUEUE),                       # its process is gone
    (run(epoch=1, alive=None), 30.0, KEEP),                           # another host, deadline not passed
    (run(epoch=1, alive=None, timeout=20.0), 30.0, REQUEUE),          # its deadline passed (20 + grace 5 < 30)
    (run(epoch=1, alive=False, attempts=3), 30.0, FAIL),              # started MAX_ATTEMPTS times
    (run(epoch=3), 30.0, KEEP),                                       # a newer term's: not mine to touch
])
def test_what_becomes_of_a_run_left_behind(left, now, expected):
    action, reason = left_run_verdict(left, my_epoch=2, now=now, grace_s=5.0, max_attempts=3, requeue=True)
    assert action is expected, reason
    if action is FAIL:
        assert "3 times" in reason


def test_recover_running_fail_fails_instead_of_requeueing():
    action, reason = left_run_verdict(run(epoch=1, alive=False), 2, 30.0, 5.0, 3, requeue=False)
    assert action is FAIL and "RECOVER_RUNNING=fail" in reason
