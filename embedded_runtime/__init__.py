"""The embedded runtime: Ollama's API over real llama.cpp inference on the CPU, with small
models installed from PyPI. Model Manager's zero-setup default when no Ollama answers."""
