"""What a job is (model.py): its document, statuses, kinds and priorities, and the public view of
it the API shows. Pure: every other package builds on it."""
