"""The comparison experiment: tasks, strategies, sandboxed evaluation and reports."""
