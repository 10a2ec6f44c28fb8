"""The shapes of the requests that make jobs, pure (no Flask, no I/O): the job API's own
(`job_shapes`), Ollama's and OpenAI's (`ollama_shapes`, `openai_shapes`) with Ollama's options
and their ranges (`ollama_options`), and what a stream has delivered so far, so that its end
sends exactly the rest of the answer (`delivery`)."""
