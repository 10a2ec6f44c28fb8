"""Load tests against a running service: the Locust user (locustfile.py, `locust -f loadtest/locustfile.py`)
and the HTML report of a load test (report.py), used by submit_test_job.py and bench/sweep.py."""
