"""Benchmarks: each prints figures measured side by side in one run; `--json` adds one JSON object as the last line."""
