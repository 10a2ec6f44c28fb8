"""Scheduling: the pure decisions and the leader's loop that acts on them.

Pure (no I/O): policy.py (scores, eviction order), model_table.py (what is loaded and its slots),
model_settings.py (context and slots per model), model_memory.py (footprints), gpu_placement.py
and cluster_plan.py (placing models on GPUs and nodes), warm_pool.py (models to keep warm),
core.py (one pass: demand and readings in, actions out, through an effects interface).
With I/O: term.py (the leader's loop, every 100 ms and on new work), events.py (what the loop
publishes), view.py (the published state), leadership.py (the scheduler lease)."""
