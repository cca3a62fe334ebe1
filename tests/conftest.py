import os

import pytest
import torch

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from compactlm.config.model import ModelConfig  # noqa: E402
from compactlm.convert import hf  # noqa: E402


def random_config(**overrides) -> ModelConfig:
    base = dict(n_layer=2, d_model=64, n_head=4, n_kv_head=2, ffn_dim=176, vocab_size=101, max_seq_len=64)
    base.update(overrides)
    return ModelConfig(**base)


def compactlm_from_hf_model(hf_model, config: ModelConfig):
    """The compactlm model holding a transformers model's weights (fused through convert.hf)."""
    from compactlm.checkpoint.model import build_model, finish_loading, load_weights

    model = build_model(config, device="meta")
    load_weights(model, hf.state_dict_from_hf(hf_model.state_dict(), config), "hf model")
    return finish_loading(model)


def write_dataset(directory, n_tokens, first_token, tokenizer_hash="tok", shard_tokens=1000):
    """A prepared dataset whose token t is first_token + t, so every window tells where it came from."""
    import numpy as np

    from compactlm.data.manifest import write_manifest
    from compactlm.data.shards import write_shard

    directory.mkdir(parents=True)
    shards = []
    for k, start in enumerate(range(0, n_tokens, shard_tokens)):
        tokens = np.arange(first_token + start, first_token + min(start + shard_tokens, n_tokens), dtype=np.uint32)
        write_shard(directory / f"s-{k}.bin", tokens, np.array([0]))
        shards.append({"file": f"s-{k}.bin", "tokens": len(tokens), "documents": 1})
    write_manifest(directory, {"format": "compactlm-tokens", "version": 1, "dtype": "uint32", "shards": shards,
                               "tokenizer": {"hash": tokenizer_hash}})
    return directory


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG file's IHDR chunk; fails on anything that is not a PNG."""
    from pathlib import Path

    data = Path(path).read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path}: not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def hf_model_for(config: ModelConfig, seed: int = 0):
    """A transformers LlamaForCausalLM of this config with random weights (norms included)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**hf.config_to_hf(config), attn_implementation="eager"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)  # non-trivial norm weights, so a mis-mapped norm shows up
            else:
                p.normal_(0.0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models: one thread is as fast, and on a loaded 2-core machine far faster.
    Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config():
    return random_config()


def _training_text() -> str:
    """Real English and code from the running interpreter's standard library, no download."""
    import inspect
    import json
    import textwrap

    docs = [textwrap.dedent(obj.__doc__ or "") for obj in (json, json.dumps, json.loads, inspect, inspect.getsource)]
    return "\n".join(docs) + "\n" + inspect.getsource(json.decoder)


@pytest.fixture(scope="session")
def sample_text() -> str:
    return _training_text()


@pytest.fixture(scope="session")
def spm_tokenizer_file(tmp_path_factory, sample_text):
    """A small Llama-style SentencePiece BPE model (byte fallback, <unk>=0 <s>=1 </s>=2)."""
    import sentencepiece as spm

    directory = tmp_path_factory.mktemp("spm")
    corpus = directory / "corpus.txt"
    corpus.write_text(sample_text)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(directory / "tokenizer"), vocab_size=400, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        add_dummy_prefix=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, minloglevel=2)
    return directory / "tokenizer.model"


@pytest.fixture(scope="session")
def bpe_tokenizer_file(tmp_path_factory, sample_text):
    """A small byte-level BPE tokenizer.json with <|endoftext|> as its document separator."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=350, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([sample_text], trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def raw_corpus(tmp_path_factory):
    from tests.data_corpus import build_raw_corpus

    root = tmp_path_factory.mktemp("raw")
    expected = build_raw_corpus(root)
    return root, expected


@pytest.fixture(scope="session")
def tiny_dataset(raw_corpus, tmp_path_factory):
    """The raw corpus prepared with a 512-token BPE: (natural language dir, code dir)."""
    from compactlm.config.loader import load_config
    from compactlm.data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("tiny_dataset")
    raw = raw_corpus[0]
    config = load_config(PrepareConfig, data={
        "output_dir": str(root), "tokenizer": {"path": str(root / "tokenizer.json"), "train_vocab_size": 512},
        "datasets": {"nl": {"sources": [{"kind": "slimpajama", "path": str(raw / "slimpajama")}]},
                     "code": {"sources": [{"kind": "starcoder", "path": str(raw / "starcoderdata")}]}},
        "workers": 1})
    prepare(config, progress=False)
    return root / "nl", root / "code"


def tiny_train_config(tiny_dataset, run_dir, **overrides):
    """A 2-layer model on the tiny dataset: 40 steps of 8 x 32 tokens in a few seconds."""
    from compactlm.config.loader import apply_overrides
    from compactlm.config.train import TrainConfig
    from compactlm.config.loader import from_dict

    data = {"run_dir": str(run_dir), "device": "cpu", "tensorboard": False,
            "model": {"preset": "tinyllama-1m", "n_layer": 2, "d_model": 64, "n_head": 2, "ffn_dim": 176},
            "data": {"datasets": [{"path": str(tiny_dataset[0]), "weight": 0.7},
                                  {"path": str(tiny_dataset[1]), "weight": 0.3}],
                     "seq_len": 32, "seed": 7, "val_fraction": 0.05},
            "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 5},
            "train": {"micro_batch": 4, "global_batch": 8, "max_steps": 40, "precision": "fp32"},
            "checkpoint_every": 5, "keep_checkpoints": 2, "eval_every": 20, "eval_samples": 16, "log_every": 10}
    apply_overrides(data, [f"{k}={v}" for k, v in overrides.items()])
    return from_dict(TrainConfig, data, "test")


def tree_hashes(*roots) -> dict[str, str]:
    """sha256 of every file under the given paths (files or directories): what a failing command must
    leave byte-identical."""
    import hashlib
    from pathlib import Path

    hashes = {}
    for root in map(Path, roots):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for path in files:
            hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def fails_with_one_line(argv: list[str], expected: str, capsys, untouched=()) -> str:
    """Run the CLI: exit 1, exactly one stderr line `error: ...` containing `expected`, no traceback,
    and every file under `untouched` byte-identical afterwards."""
    from compactlm.cli import main

    before = tree_hashes(*untouched)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, (argv, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, (argv, err)
    assert tree_hashes(*untouched) == before, argv
    return err.strip()


def quiet(*args):
    pass


def losses(run_dir) -> dict[int, float]:
    """{step: training loss} from a run's metrics.jsonl."""
    import json
    from pathlib import Path

    lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def run_cli(args, env_extra=None, **kwargs):
    """`python -m compactlm ARGS` in its own process group (so a test can SIGKILL all of it)."""
    import subprocess
    import sys

    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "compactlm", *args], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def write_config(config, path):
    """A typed config written as the YAML file a user would pass."""
    import yaml

    from compactlm.config.loader import to_dict

    path.write_text(yaml.safe_dump(to_dict(config)))
    return path
