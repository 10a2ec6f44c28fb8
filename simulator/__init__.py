"""The GPU simulator (Ollama API, virtual GPU): for scale tests and capacity planning."""
