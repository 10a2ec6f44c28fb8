"""The service facade the API talks to (facade.Service): the job store, the queue, leadership
and the scheduling term of this process, answers streamed back to waiting requests (answers.py)
and the result cache's keys (result_cache.py)."""
