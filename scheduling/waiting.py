"""The order of the waiting jobs: by priority, then by a fair share between tenants (and users),
then by submission. Pure: no clock of its own, no I/O, not thread-safe (its owner locks it).

Order: effective priority = rank (low 0, normal 1, high 2) + min(seconds waited / QUEUE_AGING_S,
AGING_CAP). Aging orders a model's work against other models' within a priority, but never lifts
a job above the next priority: under overload, unbounded aging would make every queue first
come, first served and high priority would wait behind the backlog. What keeps lower priorities
from starving instead is a share of the service (PRIORITY_SHARES, high 8 : normal 3 : low 1 by
default): the index counts the slots it gave each priority over the last SHARE_WINDOW grants,
and when a waiting priority has had less than its share (relative to its weight, among the
priorities that have work waiting), it is served next, and its models become the most urgent.

Inside one model and priority, jobs wait in one line per (tenant, user), each in submission
order; the next job is the head of the line whose tenant, then user, has received the least
service (`fair_share.FairShare`). Between models of one priority, the model whose next job's
tenant has received the least goes first (`Demand.service`), aging next. A pass looks at the
heads of the lines only, whatever the queue's length.
"""
from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Mapping
from typing import NamedTuple

from jobs.model import Priority
from scheduling.fair_share import DEFAULT_OUTPUT_WEIGHT, FairShare, Who
from scheduling.preemption import Waiting as Need
from vram_scheduler import Demand

RANKS = tuple(sorted(p.rank for p in Priority))
AGING_CAP = 0.9                    # aging never lifts a job a whole priority level
SHARE_WINDOW = 200                 # grants over which each priority's share of the service is counted
OWED_AFTER = 2.0                   # grants short of its share before a priority is served out of turn
DEFAULT_SHARES = {Priority.LOW.rank: 1.0, Priority.NORMAL.rank: 3.0, Priority.HIGH.rank: 8.0}


class Waiting(NamedTuple):
    """One waiting job, as the index keeps it."""
    submitted_at: float
    job_id: str
    model: str
    rank: int
    who: Who = Who()
    prompt_tokens: int = 0               # estimated, for its charge when it starts
    answer_limit: int | None = None      # options.num_predict, when set


_Line = deque[Waiting]                   # one (tenant, user)'s jobs, in submission order
_Lines = dict[tuple[str, str], _Line]    # a model's jobs of one priority, by (tenant, user)


class WaitingIndex:
    """Waiting jobs per model, priority and (tenant, user), each line in submission order."""

    def __init__(self, aging_s: float, shares: Mapping[int, float] | None = None,
                 output_weight: float = DEFAULT_OUTPUT_WEIGHT, fair: bool = True):
        self.aging_s = aging_s
        self.shares = dict(shares or DEFAULT_SHARES)
        self.fair = fair                                  # False: first come, first served inside a priority
        self.share = FairShare(output_weight)
        self._models: dict[str, dict[int, _Lines]] = {}
        self._size = 0
        self._waiting = dict.fromkeys(RANKS, 0)          # waiting jobs per rank
        self._granted = dict.fromkeys(RANKS, 0.0)        # slots given per rank, decayed over SHARE_WINDOW

    def __len__(self) -> int:
        return self._size

    def add(self, job_id: str, model: str, rank: int, submitted_at: float, who: Who = Who(),
            prompt_tokens: int = 0, answer_limit: int | None = None) -> None:
        self.put(Waiting(submitted_at, job_id, model, rank, who, prompt_tokens, answer_limit))

    def put(self, item: Waiting) -> None:
        """Add a job; one taken earlier and put back (its run never began) returns to its place
        in line, and its charge is taken back."""
        self.share.refund(item.job_id)
        lines = self._models.setdefault(item.model, {}).setdefault(item.rank, {})
        line = lines.setdefault(self._line_key(item.who), deque())
        if not line or line[-1] <= item:
            line.append(item)
        else:
            bisect.insort(line, item)
        self.share.arrive(item.who)
        self._size += 1
        self._waiting[item.rank] = self._waiting.get(item.rank, 0) + 1

    def _line_key(self, who: Who) -> tuple[str, str]:
        return (who.tenant, who.user) if self.fair else ("", "")

    # --- shares between priorities ---------------------------------------------------------------
    def owed(self) -> int | None:
        """The priority furthest short of its share of the service (its weight's part of the
        grants to the priorities with work waiting), when it is short by OWED_AFTER grants or
        more and is not the most urgent priority waiting anyway."""
        waiting = [r for r, n in self._waiting.items() if n > 0]
        if len(waiting) < 2:
            return None
        weight = sum(self.shares.get(r, 1.0) for r in waiting)
        granted = sum(self._granted.get(r, 0.0) for r in waiting)
        deficit = {r: self.shares.get(r, 1.0) / weight * granted - self._granted.get(r, 0.0) for r in waiting}
        nxt = max(waiting, key=lambda r: (deficit[r], r))
        if deficit[nxt] < OWED_AFTER or nxt == max(waiting):
            return None
        return nxt

    def _grant(self, rank: int) -> None:
        keep = 1.0 - 1.0 / SHARE_WINDOW
        for r in self._granted:
            self._granted[r] *= keep
        self._granted[rank] = self._granted.get(rank, 0.0) + 1.0

    def score(self, rank: int, submitted_at: float, now: float, owed: int | None = None) -> float:
        aged = min(max(now - submitted_at, 0.0) / self.aging_s, AGING_CAP)
        if rank == owed:
            return max(RANKS) + 1 + aged
        return rank + aged

    # --- reading and taking ----------------------------------------------------------------------
    def _next_line(self, lines: _Lines) -> _Line | None:
        """The line whose head goes next among one model's jobs of one priority."""
        live = [line for line in lines.values() if line]
        if not live:
            return None
        if not self.fair:
            return min(live, key=lambda line: line[0])
        return min(live, key=lambda line: (self.share.rank(line[0].who), line[0]))

    def _best_rank(self, ranks: dict[int, _Lines], now: float, owed: int | None) -> tuple[int, float] | None:
        best: tuple[int, float] | None = None
        for rank, lines in ranks.items():
            heads = [line[0].submitted_at for line in lines.values() if line]
            if heads:
                score = self.score(rank, min(heads), now, owed)
                if best is None or score > best[1]:
                    best = (rank, score)
        return best

    def demand(self, now: float) -> list[Demand]:
        """Per model: waiting count, best effective priority (its oldest job's aging), oldest
        submission, and the service received by the tenant whose job would go next."""
        out = []
        owed = self.owed()
        for model, ranks in self._models.items():
            best = self._best_rank(ranks, now, owed)
            if best is None:
                continue
            rank, score = best
            waiting = sum(len(line) for lines in ranks.values() for line in lines.values())
            oldest = min(line[0].submitted_at for lines in ranks.values() for line in lines.values() if line)
            head_wait = min(line[0].submitted_at for line in ranks[rank].values() if line)
            nxt = self._next_line(ranks[rank])
            service = self.share.tenant_counter(nxt[0].who.tenant) if nxt and self.fair else 0.0
            out.append(Demand(model, waiting, score, oldest, rank, max(now - head_wait, 0.0), service))
        return out

    def needs(self, now: float) -> list[Need]:
        """Per model and priority: how many jobs wait, and how long the first has (preemption).
        None while a priority is owed its share: a slot freed then would go to the owed
        priority, not to the work it was freed for."""
        if self.owed() is not None:
            return []
        out = []
        for model, ranks in self._models.items():
            for rank, lines in ranks.items():
                heads = [line[0].submitted_at for line in lines.values() if line]
                if heads:
                    out.append(Need(model, rank, sum(len(line) for line in lines.values()), max(now - min(heads), 0.0)))
        return out

    def pop(self, model: str, now: float) -> str | None:
        """The next waiting job of `model`, removed from the index."""
        entry = self.pop_entry(model, now)
        return entry.job_id if entry else None

    def pop_entry(self, model: str, now: float) -> Waiting | None:
        """Like `pop`, the whole entry (to put it back with `put` if its run does not begin). The
        job's tenant is charged its estimated cost."""
        ranks = self._models.get(model)
        if not ranks:
            return None
        best = self._best_rank(ranks, now, self.owed())
        line = self._next_line(ranks[best[0]]) if best else None
        if best is None or line is None:
            del self._models[model]
            return None
        item = line.popleft()
        self._forget(item)
        self._grant(item.rank)
        self.share.start(item.job_id, item.who, model, item.prompt_tokens, item.answer_limit)
        return item

    def _forget(self, item: Waiting) -> None:
        """`item` left its line: the counts, and empty lines, follow."""
        self._size -= 1
        self._waiting[item.rank] -= 1
        self.share.leave(item.who)
        ranks = self._models[item.model]
        lines = ranks[item.rank]
        key = self._line_key(item.who)
        if not lines[key]:
            del lines[key]
            if not lines:
                del ranks[item.rank]
                if not ranks:
                    del self._models[item.model]

    def settle(self, job_id: str, prompt_tokens: int, answer_tokens: int) -> None:
        """A job taken from here ended having used these tokens (its tenant's charge is corrected)."""
        self.share.settle(job_id, prompt_tokens, answer_tokens)

    def drop_model(self, model: str) -> list[str]:
        ids: list[str] = []
        for lines in list(self._models.get(model, {}).values()):
            for line in list(lines.values()):
                while line:
                    item = line.popleft()
                    ids.append(item.job_id)
                    self._forget(item)
        return ids

    def model_order(self, model: str, now: float, limit: int) -> list[Waiting]:
        """`model`'s waiting jobs in the order they would be taken if nothing else arrived (its
        first `limit`), without taking them."""
        ranks = self._models.get(model)
        if not ranks:
            return []
        shadow = WaitingIndex(self.aging_s, self.shares, self.share.output_weight, self.fair)
        shadow.share = self.share.copy()
        shadow._granted = dict(self._granted)
        shadow._waiting = dict(self._waiting)
        shadow._models = {model: {rank: {k: deque(line) for k, line in lines.items()} for rank, lines in ranks.items()}}
        shadow._size = sum(len(line) for lines in ranks.values() for line in lines.values())
        order: list[Waiting] = []
        while len(order) < limit:
            item = shadow.pop_entry(model, now)
            if item is None:
                break
            order.append(item)
        return order

    def clear(self) -> None:
        self._models.clear()
        self._size = 0
        self._waiting = dict.fromkeys(RANKS, 0)
        self.share = FairShare(self.share.output_weight)
