"""The shapes of Ollama's and OpenAI's APIs for jobs of the manager, pure (no Flask, no I/O):
requests to job fields (`ollama_shapes`, `openai_shapes`), and what a stream has delivered so
far, so that its end sends exactly the rest of the answer (`delivery`)."""
