"""The fair share between tenants (and users) inside a priority: pure decisions, no threads, no
sleeps. VTC's properties: the least-served tenant goes next, no banked credit, the service gap
between backlogged tenants stays within twice the largest request's cost, weights."""
import pytest

from jobs.model import JobDoc, JobKind
from scheduling.fair_share import FairShare, Who, share_fields
from scheduling.waiting import WaitingIndex
from vram_scheduler import Demand

A, B, C = Who("alpha"), Who("beta"), Who("gamma")


def flood(index: WaitingIndex, who: Who, n: int, start: float, model: str = "m", rank: int = 1,
          prompt_tokens: int = 10, limit: int | None = 100) -> None:
    for i in range(n):
        index.add(f"{who.tenant}{who.user}-{i}", model, rank, start + i * 0.001, who, prompt_tokens, limit)


def run(index: WaitingIndex, n: int, model: str = "m", answer: int = 100, prompt: int = 10) -> list[str]:
    """Take `n` jobs one at a time, each finishing with `answer` tokens before the next starts."""
    taken = []
    for _ in range(n):
        job_id = index.pop(model, now=100.0)
        if job_id is None:
            break
        index.settle(job_id, prompt, answer)
        taken.append(job_id)
    return taken


def test_a_tenant_that_arrives_behind_a_flood_is_served_next_not_after_it():
    index = WaitingIndex(aging_s=60)
    flood(index, A, 60, 0.0)
    run(index, 2)                           # alpha alone for a while
    flood(index, B, 4, 1.0)
    order = run(index, 12)
    beta_done = max(i for i, job in enumerate(order) if job.startswith("beta"))
    assert sum(job.startswith("alpha") for job in order[:beta_done]) <= 4       # alternating
    assert [j for j in order if j.startswith("beta")] == [f"beta-{i}" for i in range(4)]   # FIFO inside a tenant


def test_without_fairness_the_same_queue_is_first_come_first_served():
    index = WaitingIndex(aging_s=60, fair=False)
    flood(index, A, 60, 0.0)
    flood(index, B, 4, 1.0)
    order = run(index, 64)
    assert order.index("beta-0") == 60


def test_a_tenant_idle_for_a_while_banks_no_credit():
    index = WaitingIndex(aging_s=60)
    flood(index, A, 10, 0.0)
    flood(index, B, 10, 0.0)
    run(index, 20)                           # both served alike, then gamma arrives fresh
    flood(index, A, 30, 10.0)
    run(index, 10)                           # alpha alone: it pulls ahead of beta and gamma
    flood(index, C, 10, 20.0)
    flood(index, B, 10, 20.0)
    share = index.share
    floor = min(share.tenant_counter("alpha"), share.tenant_counter("beta"), share.tenant_counter("gamma"))
    assert share.tenant_counter("gamma") == pytest.approx(share.tenant_counter("alpha"))  # lifted, not zero
    assert floor == share.tenant_counter("alpha")
    order = run(index, 20)
    # three backlogged tenants alternate from the same level: none gets a run of its own
    for i in range(0, 18, 3):
        assert len({job.split("-")[0] for job in order[i:i + 3]}) == 3, order


@pytest.mark.parametrize("answers", [(10, 500), (500, 10), (1, 1000)])
def test_the_service_gap_between_backlogged_tenants_stays_within_twice_the_largest_request(answers):
    index = WaitingIndex(aging_s=60)
    size = {"alpha": answers[0], "beta": answers[1]}
    flood(index, A, 200, 0.0, limit=None)
    flood(index, B, 200, 0.0, limit=None)
    share, biggest, worst = index.share, 0.0, 0.0
    for _ in range(150):
        job_id = index.pop("m", 100.0)
        assert job_id is not None
        tenant = job_id.split("-")[0]
        index.settle(job_id, 10, size[tenant])
        biggest = max(biggest, share.cost(10, size[tenant]))
        worst = max(worst, abs(share.served.get("alpha", 0.0) - share.served.get("beta", 0.0)))
    assert worst <= 2 * biggest


def test_weights_divide_the_service_in_their_proportion():
    index = WaitingIndex(aging_s=60)
    flood(index, Who("big", weight=3.0), 200, 0.0)
    flood(index, Who("small", weight=1.0), 200, 0.0)
    order = run(index, 100)
    big = sum(job.startswith("big") for job in order)
    assert 73 <= big <= 77            # 3 : 1


def test_users_inside_a_tenant_share_alike_and_the_tenant_as_a_whole_against_another():
    index = WaitingIndex(aging_s=60)
    flood(index, Who("lab", "ann"), 40, 0.0)
    flood(index, Who("lab", "bob"), 2, 1.0)
    flood(index, Who("ops"), 40, 2.0)
    order = run(index, 8)
    assert sum(job.startswith("ops") for job in order) == 4                   # the tenants alternate
    assert {"labbob-0", "labbob-1"} <= set(order)                            # bob is not behind ann's 40


def test_priority_still_comes_first_and_a_job_put_back_gets_its_charge_back():
    index = WaitingIndex(aging_s=60)
    flood(index, A, 5, 0.0, rank=2)
    flood(index, B, 5, 0.0, rank=1)
    assert [index.pop("m", 1.0) for _ in range(5)] == [f"alpha-{i}" for i in range(5)]
    before = index.share.tenant_counter("beta")
    entry = index.pop_entry("m", 1.0)
    assert entry is not None and index.share.tenant_counter("beta") > before
    index.put(entry)                                   # its run did not begin
    assert index.share.tenant_counter("beta") == pytest.approx(before)
    assert index.pop("m", 1.0) == "beta-0"


def test_the_estimate_is_replaced_by_what_the_job_really_used():
    share = FairShare(output_weight=2.0)
    share.arrive(A)
    share.start("j", A, "m", prompt_tokens=100, answer_limit=50)
    assert share.tenant_counter("alpha") == 100 + 2 * 50           # estimated: the answer limit
    share.settle("j", 80, 7)
    assert share.tenant_counter("alpha") == 80 + 2 * 7
    share.start("k", A, "m", prompt_tokens=10, answer_limit=None)
    assert share.tenant_counter("alpha") == 94 + 10 + 2 * 7        # the model's mean answer so far


def test_the_model_whose_next_tenant_is_least_served_is_the_most_urgent_at_one_priority():
    index = WaitingIndex(aging_s=60)
    flood(index, A, 3, 0.0, model="x")
    flood(index, B, 3, 50.0, model="y")                # younger than alpha's ...
    run(index, 2, model="x")                           # ... but alpha has been served since
    demand = sorted(index.demand(now=60.0), key=Demand.urgency)
    assert [d.model for d in demand] == ["y", "x"]
    index.add("urgent", "x", 2, 59.0, A)
    assert sorted(index.demand(now=60.0), key=Demand.urgency)[0].model == "x"   # priority first


def test_the_order_a_model_would_be_served_in_is_read_without_taking_anything():
    index = WaitingIndex(aging_s=60)
    flood(index, A, 4, 0.0)
    flood(index, B, 2, 1.0)
    order = [item.job_id for item in index.model_order("m", now=2.0, limit=10)]
    assert order[:4] == ["alpha-0", "beta-0", "alpha-1", "beta-1"] and len(order) == 6
    assert len(index) == 6 and index.share.tenant_counter("alpha") == 0.0
    assert [index.pop("m", 2.0) for _ in range(6)] == order


def test_share_fields_estimate_the_prompt_and_read_the_answer_limit():
    job = JobDoc(kind=JobKind.CHAT.value, messages=[{"role": "user", "content": "x" * 400}],
                 options={"num_predict": 64})
    fields = share_fields(job, "ann", 2.0)
    assert fields == {"user": "ann", "weight": 2.0, "prompt_tokens": 100, "answer_limit": 64}
    embed = share_fields(JobDoc(kind="embed", input=["a" * 40]), None, 0.0)
    assert embed["answer_limit"] == 0 and embed["weight"] == 1.0 and embed["user"] == ""


def test_the_fairness_measures_of_a_run():
    from simulator.des import Job
    from simulator.fairness import fair_share_index, max_min_shares, max_service_gap

    def job(i, tenant, arrival, started, tokens=10):
        return Job(i, "m", "normal", arrival, tokens, started=started, finished=started + 1, tenant=tenant)

    # both wait from t=0; a is served twice (40) before b once (20): a gap of 40 while both wait
    jobs = [job(0, "a", 0, 1), job(1, "a", 0, 2), job(2, "b", 0, 3), job(3, "b", 0, 4)]
    assert max_service_gap(jobs) == 40
    # b arrives only once a has been served: no stretch in which both waited, no gap
    assert max_service_gap([job(0, "a", 0, 1), job(1, "b", 2, 3)]) == 0
    assert max_min_shares({"a": 10, "b": 1, "c": 100}, 30) == {"b": 1, "a": 10, "c": 19}
    assert fair_share_index(jobs, until=10) == 1.0
    skewed = [job(0, "a", 0, 1), job(1, "a", 0, 2), job(2, "a", 0, 3), job(3, "b", 0, 11)]
    assert fair_share_index(skewed, until=10) < 0.6


def test_user_counters_stay_bounded_however_many_users_clients_name(monkeypatch):
    """Users come from a header any client sets: a client naming a new user per job must not
    grow the scheduler's memory without bound, and forgetting idle users keeps the order."""
    from scheduling import fair_share
    monkeypatch.setattr(fair_share, "MAX_USERS", 50)
    share = FairShare()
    steady = Who("alpha", "steady")
    share.arrive(steady)
    share.start("s0", steady, "m", prompt_tokens=10, answer_limit=5)
    for n in range(1000):                        # a new user per job, each run and finished
        who = Who("alpha", f"u{n}")
        share.arrive(who)
        share.leave(who)
        share.start(f"j{n}", who, "m", prompt_tokens=10, answer_limit=5)
        share.settle(f"j{n}", 10, 5)
    assert len(share.users) <= 51 + 1
    assert ("alpha", "steady") in share.users                 # running: never forgotten
    share.settle("s0", 10, 5)
    late = Who("alpha", "late")
    share.arrive(late)                                        # lifted to its tenant's floor, not 0
    assert share.rank(late)[1] >= min(v for k, v in share.users.items() if k != ("alpha", "late"))
