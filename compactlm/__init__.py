"""compactlm: pretrain compact Llama-architecture language models the TinyLlama way."""

from compactlm.checkpoint import build_model, from_pretrained, save_checkpoint
from compactlm.config import PRESETS, ModelConfig, get_preset
from compactlm.errors import CompactlmError
from compactlm.generate import generate
from compactlm.model import Transformer
from compactlm.tokenizer import Tokenizer, load_tokenizer

__version__ = "0.1.0"
__all__ = ["PRESETS", "CompactlmError", "ModelConfig", "Tokenizer", "Transformer", "build_model",
           "from_pretrained", "generate", "get_preset", "load_tokenizer", "save_checkpoint"]
