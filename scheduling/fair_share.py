"""A fair share of the service between tenants, and between users within a tenant, inside each
priority: the Virtual Token Counter (Sheng et al., "Fairness in Serving Large Language Models",
OSDI'24), adapted to a scheduler that hands out slots.

Each tenant has a counter of the service it has received, in weighted tokens divided by its
weight (`keys create --weight`): a prompt token counts 1, an output token OUTPUT_WEIGHT (2 by
default, as in VTC's evaluation: output tokens are made one at a time, prompt tokens in a batch).
Among the tenants waiting for a slot, the one with the least counter goes first; within it, the
user with the least counter (the same rule one level down).

Why tokens, not the runtime's seconds: a token count is known when the job ends whatever else
ran beside it, while a job's seconds depend on how many others shared the GPU with it (a tenant
would be charged more for running at a busy time); and it is the unit clients already see in
their usage and quotas.

A job is charged when it starts, with an estimate (its prompt's length / 4, and its answer
limit or the model's mean answer so far, whichever is less), and the estimate is replaced by the
real count when it ends; a job put back in line is refunded. A tenant that starts waiting is
lifted to the least counter among the tenants already waiting (never lowered): time spent idle
banks no credit. With no one waiting, it is lifted to the most any tenant has (everyone starts
level). Between two tenants that keep work waiting, the gap in service stays within VTC's bound
(about twice the cost of the largest request), which `bench/sharing.py` measures.

Pure: no clock, no I/O, not thread-safe (the waiting index's owner calls it under its lock).
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobs.model import JobDoc, JobKind

DEFAULT_OUTPUT_WEIGHT = 2.0
DEFAULT_ANSWER_TOKENS = 256        # a model's expected answer before any of its jobs has finished
MEAN_DECAY = 0.1                   # weight of each finished job in a model's mean answer length
CHARS_PER_TOKEN = 4


def estimated_tokens(chars: int) -> int:
    """A prompt's tokens before the runtime has counted them (about four characters each)."""
    return max(1, chars // CHARS_PER_TOKEN)


MAX_USER_CHARS = 256
MAX_USERS = 10_000     # user counters kept; past it the idle users' are forgotten


def share_fields(job: JobDoc, user: str | None, weight: float) -> dict[str, Any]:
    """What the queue needs of `job` for its fair share (kept in the job as `share`): its user
    inside the tenant, the tenant's weight, its prompt's estimated tokens and its answer limit."""
    chars = len(job.get("prompt") or "") + len(job.get("system") or "")
    for message in job.get("messages") or []:
        content = message.get("content")
        chars += len(content) if isinstance(content, str) else len(json.dumps(content, default=str))
    if job.get("input") is not None:
        chars += len(json.dumps(job.get("input"), default=str))
    limit = (job.get("options") or {}).get("num_predict")
    if job.get("kind") == JobKind.EMBED.value:
        limit = 0
    elif not (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0):
        limit = None
    return {"user": (user or "")[:MAX_USER_CHARS], "weight": weight if weight > 0 else 1.0,
            "prompt_tokens": estimated_tokens(chars), "answer_limit": limit}


@dataclass(frozen=True)
class Who:
    """Whose job it is: a tenant (an API key's; "" with keys off) and a user inside it."""
    tenant: str = ""
    user: str = ""
    weight: float = 1.0            # the tenant's weight (its key's)


@dataclass
class _Charge:
    who: Who
    model: str
    charged: float                 # weighted tokens charged so far (not yet divided by weight)


class FairShare:
    def __init__(self, output_weight: float = DEFAULT_OUTPUT_WEIGHT):
        self.output_weight = output_weight
        self.tenants: dict[str, float] = {}                  # service received / weight
        self.users: dict[tuple[str, str], float] = {}         # the same, per user inside its tenant
        self.weights: dict[str, float] = {}
        self.served: dict[str, float] = {}                    # weighted tokens per tenant (not divided)
        self._waiting: Counter[str] = Counter()               # waiting jobs per tenant
        self._waiting_users: Counter[tuple[str, str]] = Counter()
        self._running_users: Counter[tuple[str, str]] = Counter()   # jobs charged and not settled
        self._prune_at = 0
        self._charges: dict[str, _Charge] = {}                # running jobs' estimates, by job id
        self._answer_mean: dict[str, float] = {}              # per model

    def copy(self) -> FairShare:
        twin = FairShare(self.output_weight)
        twin.tenants, twin.users, twin.weights = dict(self.tenants), dict(self.users), dict(self.weights)
        twin.served = dict(self.served)
        twin._waiting, twin._waiting_users = Counter(self._waiting), Counter(self._waiting_users)
        twin._running_users = Counter(self._running_users)
        twin._prune_at = self._prune_at
        twin._charges = dict(self._charges)
        twin._answer_mean = dict(self._answer_mean)
        return twin

    # --- waiting ---------------------------------------------------------------------------------
    def arrive(self, who: Who) -> None:
        """A job of `who` starts waiting."""
        self.weights[who.tenant] = who.weight if who.weight > 0 else 1.0
        if self._waiting[who.tenant] == 0:
            self.tenants[who.tenant] = max(self.tenants.get(who.tenant, 0.0),
                                           self._floor(self.tenants, self._waiting, who.tenant))
        user = (who.tenant, who.user)
        if self._waiting_users[user] == 0:
            peers = Counter({k: n for k, n in self._waiting_users.items() if k[0] == who.tenant})
            known = {k: v for k, v in self.users.items() if k[0] == who.tenant}
            self.users[user] = max(self.users.get(user, 0.0), self._floor(known, peers, user))
        self._waiting[who.tenant] += 1
        self._waiting_users[user] += 1

    def leave(self, who: Who) -> None:
        """A job of `who` stops waiting (taken to run, dropped or failed)."""
        _decrement(self._waiting, who.tenant)
        _decrement(self._waiting_users, (who.tenant, who.user))
        if len(self.users) > max(MAX_USERS, self._prune_at):
            self._forget_idle_users()
            self._prune_at = 2 * len(self.users)     # many busy users: scan again only once they double

    def _forget_idle_users(self) -> None:
        """Users are named by clients (`X-User`), so their counters must not grow without bound:
        past MAX_USERS, the counters of users with nothing waiting or running are forgotten (but
        each tenant's highest, the floor of users that come back when none wait). A forgotten
        user that comes back starts at its tenant's floor; only the order among that tenant's own
        users can change, never the share between tenants (their counters are kept)."""
        highest: dict[str, tuple[float, tuple[str, str]]] = {}
        for key, counter in self.users.items():
            if key[0] not in highest or counter > highest[key[0]][0]:
                highest[key[0]] = (counter, key)
        keep = {key for _, key in highest.values()}
        for key in list(self.users):
            if not (self._waiting_users[key] or self._running_users[key] or key in keep):
                del self.users[key]

    @staticmethod
    def _floor(counters: Mapping[Any, float], waiting: Mapping[Any, int], me: object) -> float:
        """Where one that starts waiting begins: the least counter among those waiting, or the
        most of anyone's when no one is."""
        others = [counters.get(k, 0.0) for k, n in waiting.items() if n > 0 and k != me]
        if others:
            return min(others)
        return max(counters.values(), default=0.0)

    def rank(self, who: Who) -> tuple[float, float]:
        """Who goes first between two jobs of one priority: the lesser (tenant's, user's) counter."""
        return self.tenants.get(who.tenant, 0.0), self.users.get((who.tenant, who.user), 0.0)

    def tenant_counter(self, tenant: str) -> float:
        return self.tenants.get(tenant, 0.0)

    # --- charging --------------------------------------------------------------------------------
    def expected_answer(self, model: str, limit: int | None) -> float:
        mean = self._answer_mean.get(model, DEFAULT_ANSWER_TOKENS)
        return float(min(mean, limit)) if limit is not None and limit >= 0 else mean

    def cost(self, prompt_tokens: float, answer_tokens: float) -> float:
        return prompt_tokens + self.output_weight * answer_tokens

    def start(self, job_id: str, who: Who, model: str, prompt_tokens: int, answer_limit: int | None) -> None:
        """`job_id` of `who` takes a slot: charged with its estimated cost."""
        estimate = self.cost(prompt_tokens, self.expected_answer(model, answer_limit))
        self._charges[job_id] = _Charge(who, model, estimate)
        self._running_users[(who.tenant, who.user)] += 1
        self._add(who, estimate)

    def settle(self, job_id: str, prompt_tokens: int, answer_tokens: int) -> None:
        """`job_id` ended having used these tokens: its estimate is replaced by them."""
        charge = self._charges.pop(job_id, None)
        if charge is None:
            return
        _decrement(self._running_users, (charge.who.tenant, charge.who.user))
        self._add(charge.who, self.cost(prompt_tokens, answer_tokens) - charge.charged)
        mean = self._answer_mean.get(charge.model)
        self._answer_mean[charge.model] = float(answer_tokens) if mean is None else (
            mean + MEAN_DECAY * (answer_tokens - mean))

    def refund(self, job_id: str) -> None:
        """`job_id` goes back in line without having run: its charge is taken back."""
        charge = self._charges.pop(job_id, None)
        if charge is not None:
            _decrement(self._running_users, (charge.who.tenant, charge.who.user))
            self._add(charge.who, -charge.charged)

    def _add(self, who: Who, tokens: float) -> None:
        weight = self.weights.get(who.tenant, 1.0)
        self.tenants[who.tenant] = self.tenants.get(who.tenant, 0.0) + tokens / weight
        user = (who.tenant, who.user)
        self.users[user] = self.users.get(user, 0.0) + tokens
        self.served[who.tenant] = self.served.get(who.tenant, 0.0) + tokens


def _decrement(counter: Counter[Any], key: object) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
