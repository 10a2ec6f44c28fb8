"""What each job cost, for the ledger: the per-job record (ledger.py), sampling the runners'
CPU, memory and energy while jobs run (sampler.py), and sharing a sample between the jobs that
ran together (shares.py, pure)."""
