"""Talking to model runtimes (Ollama, the embedded runtime, the GPU simulator): the HTTP client
(client.py) and its errors (errors.py), the Ollama protocol's shapes (ollama_protocol.py), which
backend to use (backends.py), starting a local runtime (launcher.py), the nodes (nodes.py), node
URLs checked and labelled (node_urls.py), and reading the GPUs (gpu_probe.py)."""
