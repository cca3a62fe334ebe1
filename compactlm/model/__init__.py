"""The model: the Llama decoder, its fused head + loss, and generation with a KV cache.

- `transformer.py`  `Transformer` (the whole model in one file), RMSNorm, RoPE, attention, SwiGLU, KV cache
- `fused_loss.py`   the output head and cross-entropy over token chunks (no full float32 logits)
- `generate.py`     greedy / temperature / top-k / top-p decoding (`compactlm.generate` is its function)
- `speculative.py`  speculative decoding: a small draft model proposes, the target verifies (`speculative_generate`)
"""

from compactlm.model.speculative import SpeculativeStats, speculative_generate
from compactlm.model.transformer import KVCache, Transformer

__all__ = ["KVCache", "SpeculativeStats", "Transformer", "speculative_generate"]
