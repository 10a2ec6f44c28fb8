"""Reference vectors for all-MiniLM-L6-v2 from sentence-transformers (torch), kept in
minilm_reference.json for tests/test_embeddings.py. Run by hand, not in the suite: torch is far
too heavy to be a dependency of the project or of its tests.

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch sentence-transformers
    make models MODELS=all-minilm       # the same weights the embedded runtime uses
    /tmp/ref/bin/python tests/data/make_minilm_reference.py .cache/models/<sha256>.d

The folder is the one the embedded runtime unpacks the model into (`python -m
embedded_runtime.catalog install all-minilm` prints it). sentence-transformers cuts inputs at 256
tokens by default; the model's positions go to 512 and Ollama's context for it is 512, so the
reference is made with max_seq_length 512, as the embedded runtime encodes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

INPUTS = [
    "This is a test sentence.",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A GPU shared by many teams needs a fair scheduler.",
    "Ollama serves local models over HTTP.",
    "Embeddings map text to vectors whose cosine similarity reflects meaning.",
    "",
    "x",
    "UPPER case and lower CASE are the same to an uncased model.",
    "Numbers: 3.14159, 2026-12-07, 42 and -7.",
    "Ünïcödé, accents, and emoji 🙂 go through WordPiece.",
    "中文文本也可以被编码。",
    "def add(a, b):\n    return a + b",
    "   leading and trailing spaces   ",
    "one two three " * 40,                                # about 120 tokens
    "The scheduler loads and unloads models within the memory budget. " * 50,   # past 512 tokens: cut
]


def main() -> None:
    folder = Path(sys.argv[1])
    model = SentenceTransformer(str(folder), device="cpu")
    model.max_seq_length = 512
    vectors = model.encode(INPUTS, batch_size=4, normalize_embeddings=True, convert_to_numpy=True)
    out = {
        "made_with": {"sentence_transformers": sentence_transformers.__version__, "torch": torch.__version__,
                      "max_seq_length": 512},
        "inputs": INPUTS,
        "vectors": [[round(float(x), 7) for x in v] for v in vectors],
    }
    target = Path(__file__).with_name("minilm_reference.json")
    target.write_text(json.dumps(out, ensure_ascii=False) + "\n")
    print(f"{len(INPUTS)} vectors of {len(vectors[0])} written to {target}")


if __name__ == "__main__":
    main()
