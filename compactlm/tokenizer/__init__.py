"""Tokenizers: SentencePiece `tokenizer.model`, Hugging Face `tokenizer.json`, or a Llama GGUF file.

- `tokenizer.py`  the `Tokenizer` that travels with datasets and checkpoints; byte-level BPE training
- `gguf.py`       a GGUF file's `tokenizer.ggml.*` fields rebuilt into a SentencePiece model

Importing this package does not import torch.
"""

from compactlm.tokenizer.tokenizer import Tokenizer, load_tokenizer, train_bpe

__all__ = ["Tokenizer", "load_tokenizer", "train_bpe"]
