"""What the service says about itself: logs (logs.py), event counters (counters.py), the activity
log (activity.py), and Prometheus metrics (prometheus_setup.py, process_metrics.py, collector.py)."""
