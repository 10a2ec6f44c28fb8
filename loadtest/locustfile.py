"""Load Model Manager with Locust (https://locust.io), for people who use it:

    pip install locust
    locust -f loadtest/locustfile.py --headless -u 32 -r 8 -t 60s --host http://127.0.0.1:5001

Each simulated user submits jobs (mixed priorities, over the models the service can run),
follows some of them to completion with long polls, and now and then reads /api/stats.
`submit_test_job.py` covers the same ground without Locust.
"""
import random

from locust import HttpUser, between, task

PROMPTS = ("Explain recursion briefly.", "What is 17 * 23?", "Write a limerick about queues.",
           "List three uses of a hash map.", "Give a one-line summary of TCP.")


class ModelManagerUser(HttpUser):
    wait_time = between(0.05, 0.5)

    def on_start(self):
        models = self.client.get("/api/models").json()["models"]
        self.models = [m["name"] for m in models if m.get("on_runtime") is not False and m.get("fits", True)
                       and "completion" in m.get("capabilities", [])] or ["smollm2:135m"]

    @task(10)
    def submit(self):
        body = {"model": random.choice(self.models), "prompt": random.choice(PROMPTS),
                "priority": random.choices(["high", "normal", "low"], [2, 5, 3])[0],
                "options": {"num_predict": 32}}
        with self.client.post("/api/submit", json=body, catch_response=True, name="/api/submit") as r:
            if r.status_code == 429:
                r.success()                  # back-pressure, not an error
            elif r.status_code != 202:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            elif random.random() < 0.2:      # follow one job in five to the end
                job_id = r.json()["job_id"]
                self.client.get(f"/api/job/{job_id}", params={"wait": 60}, name="/api/job/[id]?wait")

    @task(1)
    def stats(self):
        self.client.get("/api/stats")
