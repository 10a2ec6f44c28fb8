"""Scheduling several runtime nodes: which node serves each model's waiting work, then each
node's own `vram_scheduler.plan`. Pure, like `plan`: values in, decisions out.

A node is one runtime (one Ollama) with its memory (one pool, or several GPUs). The rules:

* Work for a model that is loaded goes to the nodes that have it, to each as many jobs as it
  has free slots, most free slots first. A node whose slots are all busy keeps sight of the
  work (so that it is not taken for an idle model and pushed out); a copy with free slots and
  nothing to do is spare, free to give way.
* When a model's waiting work exceeds what its nodes' slots take by `replica_after` jobs or
  more, and another node has room for it now, a second copy is loaded there: a replica takes
  the overflow. Once that work has waited `replica_wait_s`, room for the copy may also be made
  by pushing out idle models with no waiting work.
* A model that is loaded nowhere goes to a node where it fits now (the one with the most free
  memory), else to the node where the most memory could be made free (free plus idle models
  with no waiting work), among nodes that have it installed and could ever hold it beside the
  models pinned there. The choice is kept from pass to pass (`placed`) while the model still
  fits there or fits nowhere now, so that two nodes do not both make room for it.
* A model that fits no node's capacity goes to the largest node, whose plan fails its jobs;
  while a node is down (it may be the one that can hold it) the work waits instead.
* Down nodes, and nodes whose memory is not known, get nothing new; a down node's models count
  as loaded nowhere.
* Pinned models stay where they are loaded (one copy of each: further copies are replicas);
  pinned or predicted models that are loaded nowhere go to the node with the most free memory
  where they fit now.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from scheduling.gpu_placement import place
from vram_scheduler import Demand, FreeMemory, Phase, Plan, Snapshot, plan


@dataclass(frozen=True)
class NodeState:
    """A node as its own scheduler sees it: its snapshot without demand, and whether it answers."""
    name: str
    ok: bool
    snapshot: Snapshot
    installed: frozenset[str] | None = None   # models it can load (None: not known, any)


@dataclass
class ClusterPlan:
    plans: dict[str, Plan] = field(default_factory=dict)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    placed: dict[str, str] = field(default_factory=dict)    # model -> node chosen to load it
    replicas: list[tuple[str, str]] = field(default_factory=list)   # (model, node) second copies


class _Room:
    """Memory per GPU of one node not yet promised in this pass."""

    def __init__(self, s: Snapshot):
        self.snapshot = s
        self.memory = FreeMemory(s)
        self.free = self.memory.free

    def fits_now(self, need: int) -> tuple[int, ...] | None:
        return self.memory.place_now(need) if self.snapshot.memory_known else None

    def take(self, alloc: tuple[int, ...]) -> None:
        self.memory.take(alloc)

    def could_hold(self, need: int, pinned: frozenset[str]) -> bool:
        """Whether `need` could ever fit here beside the models pinned here (never, while the
        node's memory is not known)."""
        return self.snapshot.memory_known and place(need, self.snapshot.room_beside(pinned),
                                                    self.snapshot.split) is not None

    def spare(self, demanded: set[str], pinned: frozenset[str]) -> list[int]:
        """Free memory per GPU, plus what idle models with no waiting work hold."""
        s, room = self.snapshot, [max(f, 0) for f in self.free]
        if not s.memory_known:
            return [0] * len(room)
        for m in s.resident:
            if m.phase is Phase.LOADED and m.running == 0 and m.name not in demanded and m.name not in pinned:
                for i, b in enumerate(s.split_of(m)):
                    room[i] += b
        return room

    def reclaimable(self, demanded: set[str], pinned: frozenset[str]) -> int:
        return sum(self.spare(demanded, pinned))


def plan_cluster(nodes: Sequence[NodeState], demand: Sequence[Demand], need_bytes: Mapping[str, int],
                 placed: Mapping[str, str] | None = None, replica_after: int = 8,
                 pinned: frozenset[str] = frozenset(), predicted: Sequence[str] = (),
                 replica_wait_s: float = 30.0) -> ClusterPlan:
    up = [n for n in nodes if n.ok]
    pins = _pins_by_node(up, pinned)
    rooms = {n.name: _Room(n.snapshot) for n in up}
    share: dict[str, list[Demand]] = {n.name: [] for n in up}
    wanted: dict[str, list[str]] = {n.name: [] for n in up}
    result = ClusterPlan()
    demanded = {d.model for d in demand}
    previous = dict(placed or {})

    def holders_of(model: str) -> list[NodeState]:
        return [n for n in up if any(m.name == model and m.phase is not Phase.UNLOADING for m in n.snapshot.resident)]

    def installed(n: NodeState, model: str) -> bool:
        return n.installed is None or model in n.installed

    def room_now(model: str, exclude: set[str]) -> tuple[NodeState, tuple[int, ...]] | None:
        need = need_bytes.get(model, 0)
        fits = [(n, alloc) for n in up if n.name not in exclude and installed(n, model)
                for alloc in [rooms[n.name].fits_now(need)] if alloc is not None]
        return max(fits, key=lambda f: (sum(rooms[f[0].name].free), f[0].name)) if fits else None

    def room_to_make(model: str, exclude: set[str]) -> tuple[NodeState, tuple[int, ...]] | None:
        """A node where `model` fits once idle models without waiting work give way."""
        need = need_bytes.get(model, 0)
        fits = [(n, alloc) for n in up if n.name not in exclude and installed(n, model)
                for alloc in [place(need, rooms[n.name].spare(demanded, pins[n.name]), n.snapshot.split)]
                if alloc is not None]
        return max(fits, key=lambda f: (rooms[f[0].name].reclaimable(demanded, pins[f[0].name]), f[0].name)) if fits else None

    node: NodeState | None
    alloc: tuple[int, ...] | None
    for d in sorted(demand, key=Demand.urgency):
        holders = holders_of(d.model)
        if holders:
            remaining = _spread_over_slots(d, holders, share)
            if remaining >= replica_after and len(holders) < len(up):
                exclude = {n.name for n in holders}
                spot = room_now(d.model, exclude)
                if spot is None and d.head_wait_s >= replica_wait_s:
                    spot = room_to_make(d.model, exclude)
                if spot is not None:
                    node, alloc = spot
                    rooms[node.name].take(alloc)
                    share[node.name].append(replace(d, waiting=remaining))
                    result.replicas.append((d.model, node.name))
            continue
        node = _home_for(d.model, up, rooms, need_bytes.get(d.model, 0), previous.get(d.model), demanded, installed,
                         pins, all_up=len(up) == len(nodes))
        if node is None:
            continue
        result.placed[d.model] = node.name
        share[node.name].append(d)
        alloc = rooms[node.name].fits_now(need_bytes.get(d.model, 0))
        if alloc is not None:
            rooms[node.name].take(alloc)

    for model in [*sorted(pinned), *predicted]:
        if model in demanded or holders_of(model) or any(model in w for w in wanted.values()):
            continue
        spot = room_now(model, set())
        if spot is not None:
            node, alloc = spot
            rooms[node.name].take(alloc)
            wanted[node.name].append(model)

    for n in up:
        s = replace(n.snapshot, demand=tuple(share[n.name]), wanted=tuple(wanted[n.name]), pinned=pins[n.name],
                    need_bytes={**n.snapshot.need_bytes, **{m: need_bytes[m] for m in
                                                            [d.model for d in share[n.name]] + wanted[n.name]
                                                            if m in need_bytes}})
        result.snapshots[n.name] = s
        result.plans[n.name] = plan(s)
    return result


def _spread_over_slots(d: Demand, holders: list[NodeState], share: dict[str, list[Demand]]) -> int:
    """Give each node that has the model as many jobs as it has free slots; return the rest."""
    def free_slots(n: NodeState) -> int:
        m = next(m for m in n.snapshot.resident if m.name == d.model)
        return max(m.slots - m.running, 0)      # a copy still loading will have its slots soon

    remaining = d.waiting
    given: dict[str, int] = {}
    for n in sorted(holders, key=lambda n: (-free_slots(n), n.name)):
        given[n.name] = min(remaining, free_slots(n))
        remaining -= given[n.name]
    for n in holders:
        # a node whose slots are full keeps the work in view, so it is not taken for idle; one
        # with free slots and nothing to do here is a spare copy, free to give way
        waiting = given[n.name] or (max(remaining, 1) if free_slots(n) == 0 else 0)
        if waiting:
            share[n.name].append(replace(d, waiting=waiting))
    return remaining


def _pins_by_node(up: list[NodeState], pinned: frozenset[str]) -> dict[str, frozenset[str]]:
    """Which pinned models each node keeps: one copy of each (a loaded one where there is),
    and, everywhere, those loaded nowhere yet (so that they are kept once loaded). Other copies
    are replicas like any other, free to go."""
    keeper: dict[str, str] = {}
    copies = sorted((m.phase is not Phase.LOADED, n.name, m.name) for n in up for m in n.snapshot.resident
                     if m.name in pinned and m.phase is not Phase.UNLOADING)
    for _, node, model in copies:               # a loaded copy first
        keeper.setdefault(model, node)
    loose = pinned - set(keeper)
    return {n.name: frozenset(m for m, at in keeper.items() if at == n.name) | loose for n in up}


def _home_for(model: str, up: list[NodeState], rooms: dict[str, _Room], need: int, before: str | None,
              demanded: set[str], installed: Callable[[NodeState, str], bool], pins: dict[str, frozenset[str]],
              all_up: bool) -> NodeState | None:
    """Where a model that is loaded nowhere should go (see the module's doc); None: it waits."""
    if not up:
        return None
    able = [n for n in up if installed(n, model) and rooms[n.name].could_hold(need, pins[n.name])]
    if not able:
        # No node that answers can take it. While a node is down (it may be the one that can),
        # the work waits; with every node up it fits none (its plan fails the jobs as never
        # fitting) or none has it (its load says so).
        known = [n for n in up if n.snapshot.memory_known]
        if not all_up or not known:
            return None
        return max(known, key=lambda n: (sum(n.snapshot.capacities), n.name))
    now = [n for n in able if rooms[n.name].fits_now(need) is not None]
    sticky = next((n for n in able if n.name == before), None)
    if sticky is not None and (sticky in now or not now):
        return sticky                   # kept while it still fits there, or fits nowhere now
    if now:
        return max(now, key=lambda n: (sum(rooms[n.name].free), n.name))
    return max(able, key=lambda n: (rooms[n.name].reclaimable(demanded, pins[n.name]), n.name))
