"""Checkpoint formats in and out of compactlm: Hugging Face transformers and lit-gpt."""
