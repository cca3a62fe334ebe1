"""`compactlm finetune`: SFT and DPO, full and LoRA, on the pretraining trainer; packing without leaks,
LoRA merging, exact resume after SIGKILL, data errors, and the export answering in transformers."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compactlm.checkpoint.layout import complete_checkpoints
from compactlm.checkpoint.model import build_model, from_pretrained, save_checkpoint
from compactlm.config.finetune import FinetuneConfig, LoraSection
from compactlm.config.loader import apply_overrides, from_dict
from compactlm.finetune import lora
from compactlm.finetune.data import conversation, encode_sft, pack
from compactlm.finetune.objectives import SFT
from compactlm.finetune.trainer import FinetuneTrainer, finetune
from compactlm.model.transformer import segment_layout
from compactlm.tokenizer.chat import chat_template
from compactlm.tokenizer.tokenizer import Tokenizer
from tests.conftest import fails_with_one_line, losses, quiet, random_config, run_cli, write_config

DEMO = Path(__file__).resolve().parents[1] / "data" / "sft-demo"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory, bpe_tokenizer_file):
    """A small random model with a byte-level BPE tokenizer, saved as a compactlm checkpoint."""
    tokenizer = Tokenizer(bpe_tokenizer_file)
    config = random_config(vocab_size=tokenizer.vocab_size, max_seq_len=512).with_special_ids(
        tokenizer.bos_id, tokenizer.eos_id)
    torch.manual_seed(11)
    return save_checkpoint(build_model(config), tmp_path_factory.mktemp("base") / "ckpt", tokenizer)


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    """Slices of the shipped demo sets (real conversations and pairs)."""
    root = tmp_path_factory.mktemp("chat")
    for name, rows in (("train", 96), ("val", 24), ("dpo-train", 48), ("dpo-val", 12)):
        lines = (DEMO / f"{name}.jsonl").read_text().splitlines()[:rows]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def config_for(base, chat_data, run_dir, **overrides) -> FinetuneConfig:
    dpo = overrides.get("finetune.method") == "dpo"
    data = {"run_dir": str(run_dir), "device": "cpu", "tensorboard": False,
            "finetune": {"base": str(base), "chat_template": "zephyr"},
            "data": {"train": str(chat_data / ("dpo-train.jsonl" if dpo else "train.jsonl")),
                     "val": str(chat_data / ("dpo-val.jsonl" if dpo else "val.jsonl")), "seq_len": 256},
            "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 3},
            "train": {"micro_batch": 4, "global_batch": 8, "max_steps": 24, "precision": "fp32"},
            "checkpoint_every": 4, "keep_checkpoints": 2, "eval_every": 12, "log_every": 4}
    apply_overrides(data, [f"{k}={v}" for k, v in overrides.items()])
    return from_dict(FinetuneConfig, data, "test")


def test_packed_conversations_score_as_each_alone(base, chat_data):
    """Attention and positions restart per conversation: packing changes no conversation's loss."""
    model = from_pretrained(base)
    tokenizer = Tokenizer.from_dir(base)
    examples = encode_sft(chat_data / "train.jsonl", tokenizer, chat_template(tokenizer, "zephyr"), 257).examples[:9]
    packed = pack(examples, 257, tokenizer.eos_id)
    assert len(packed.tokens) < len(examples)  # several conversations share a row

    def token_losses(tokens, segments):
        attn, positions = segment_layout(segments[:, :-1])
        logits = model(tokens[:, :-1], attn_mask=attn, position_ids=positions)
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")

    with torch.no_grad():
        rows = token_losses(torch.from_numpy(packed.tokens), torch.from_numpy(packed.segments))
        alone = [token_losses(torch.from_numpy(ids)[None], torch.zeros(1, len(ids), dtype=torch.long))[0]
                 for ids, _ in examples]
    found = 0
    for r in range(len(packed.tokens)):
        for s in set(packed.segments[r].tolist()):
            where = (packed.segments[r] == s).nonzero()[0]
            match = [i for i, (ids, _) in enumerate(examples)
                     if len(ids) == len(where) and (packed.tokens[r, where] == ids).all()]
            if not match:
                continue  # the padding segment
            found += 1
            # targets inside the conversation: positions where[0] .. where[-1] - 1 predict its next tokens
            torch.testing.assert_close(rows[r, where[0]:where[-1]], alone[match[0]], rtol=1e-5, atol=1e-5)
    assert found == len(examples)


def test_the_sft_loss_counts_assistant_tokens_only(base, chat_data):
    model = from_pretrained(base)
    tokenizer = Tokenizer.from_dir(base)
    encoded = encode_sft(chat_data / "train.jsonl", tokenizer, chat_template(tokenizer, "zephyr"), 257)
    packed = pack(encoded.examples[:6], 257, tokenizer.eos_id)
    sft = SFT(packed, None, 0, encoded.hash, fused=True)
    batch = next(sft.batches(len(packed.tokens), 0, 0, 1))
    loss, _ = sft.loss(model, batch)
    # the same mean, by hand: every assistant target, each scored alone
    total, count = 0.0, 0
    for ids, mask in encoded.examples[:6]:
        with torch.no_grad():
            logp = model(torch.from_numpy(ids)[None, :-1]).log_softmax(-1)[0]
        scored = torch.from_numpy(mask[1:])
        total -= logp[torch.arange(len(ids) - 1), torch.from_numpy(ids[1:])][scored].sum().item()
        count += int(scored.sum())
    assert loss.item() == pytest.approx(total / count, rel=1e-4)


def test_lora_starts_as_the_base_and_merges_exactly(base):
    model = from_pretrained(base)
    x = torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
    settings = LoraSection(rank=4, alpha=8.0, targets=["qkv", "proj", "gate_up", "down"])
    torch.manual_seed(0)
    adapted = lora.add_lora(model, settings)
    with torch.no_grad():
        assert torch.equal(adapted(x), reference)  # B = 0: the adapters change nothing yet
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
        unmerged = adapted(x)
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable) and len(trainable) == 2 * 4 * model.config.n_layer
    plain = build_model(model.config)
    plain.load_state_dict(lora.merged_state(adapted.state_dict(), settings), strict=False)
    plain.lm_head.weight = plain.embed.weight if model.config.tie_embeddings else plain.lm_head.weight
    with torch.no_grad():
        merged = plain(x)
    assert (unmerged - reference).abs().max() > 1e-3  # the adapters do something
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method, adapter", [("sft", "none"), ("sft", "lora"), ("dpo", "none"), ("dpo", "lora")])
def test_finetuning_learns_and_writes_loadable_checkpoints(base, chat_data, tmp_path, method, adapter):
    config = config_for(base, chat_data, tmp_path / "run", **{"finetune.method": method, "finetune.adapter": adapter})
    result = finetune(config, console=quiet)
    steps = losses(tmp_path / "run")
    assert len(steps) == 24
    first, last = sum(list(steps.values())[:4]) / 4, sum(list(steps.values())[-4:]) / 4
    assert last < first  # it learns
    if method == "dpo":
        # a random base generalises nothing to unseen modules: only the training pairs are learnt
        assert result["reward_accuracy"] > 0.5 and result["reward_margin"] > 0
        assert {"val_loss", "val_reward_margin", "val_reward_accuracy"} <= set(result)
    checkpoint = complete_checkpoints(tmp_path / "run")[-1]
    model = from_pretrained(checkpoint)  # merged weights for LoRA: every tool reads it as a plain model
    assert Tokenizer.from_dir(checkpoint).chat_template == chat_template(Tokenizer.from_dir(base), "zephyr").source
    changed = {k for k, v in load_file(checkpoint / "model.safetensors").items()
               if not torch.equal(v, load_file(base / "model.safetensors")[k])}
    if adapter == "lora":
        assert (checkpoint / lora.ADAPTER_WEIGHTS).is_file()
        assert json.loads((checkpoint / lora.ADAPTER_CONFIG).read_text())["r"] == 8
        assert changed and all(k.endswith(("qkv.weight", "proj.weight", "gate_up.weight", "down.weight"))
                               for k in changed)
    else:
        assert "embed.weight" in changed
    assert model.config == from_pretrained(base).config


@pytest.mark.parametrize("method, adapter", [("sft", "lora"), ("dpo", "none")])
def test_sigkill_and_resume_is_bit_identical(base, chat_data, tmp_path, method, adapter):
    overrides = {"finetune.method": method, "finetune.adapter": adapter, "train.max_steps": 40}
    finetune(config_for(base, chat_data, tmp_path / "straight", **overrides), console=quiet)
    config = write_config(config_for(base, chat_data, tmp_path / "run", **overrides), tmp_path / "ft.yaml")
    proc = run_cli(["finetune", str(config)])
    metrics, deadline = tmp_path / "run" / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 17:
            break
        time.sleep(0.005)
    assert proc.poll() is None, proc.stdout.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert max(losses(tmp_path / "run")) < 40
    resumed = run_cli(["finetune", str(config), "--resume"])
    output = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0 and "resumed from" in output, output
    assert losses(tmp_path / "run") == losses(tmp_path / "straight")  # every step, bit for bit
    ours, reference = (load_file(complete_checkpoints(run)[-1] / "model.safetensors")
                       for run in (tmp_path / "run", tmp_path / "straight"))
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def test_bad_rows_are_one_line_naming_the_file_and_line(base, chat_data, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    good = (chat_data / "train.jsonl").read_text().splitlines()[:3]
    cases = {
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}':
            r"bad.jsonl:4: messages\[1\]\.role 'bot': choose system, user, assistant",
        '{"prompt": "hi"}': r"bad.jsonl:4: expected \{\"messages\"",
        '{"messages": [{"role": "user", "content": "only a question"}]}': "bad.jsonl:4: no assistant message",
        '{"messages": [': "bad.jsonl:4: not JSON",
    }
    config = write_config(config_for(base, chat_data, tmp_path / "run", **{"data.train": str(bad)}),
                          tmp_path / "ft.yaml")
    for row, message in cases.items():
        bad.write_text("\n".join(good + [row]) + "\n")
        fails_with_one_line(["finetune", str(config)], message.replace("\\", ""), capsys)
        assert not (tmp_path / "run" / "checkpoints").exists()
    fails_with_one_line(["finetune", str(config), "finetune.method=ppo"],
                        "finetune.method: 'ppo': choose sft, dpo", capsys)


@pytest.fixture(scope="module")
def sft_checkpoint(base, chat_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sft") / "run"
    finetune(config_for(base, chat_data, run, **{"train.max_steps": 40}), console=quiet)
    return complete_checkpoints(run)[-1]


def test_the_hf_export_answers_in_transformers_pipeline(sft_checkpoint, chat_data, tmp_path):
    """transformers' text-generation pipeline, given chat messages, replies as `compactlm chat` does."""
    from transformers import pipeline

    from compactlm.convert.hf import save_hf
    from compactlm.model.chat import ChatSession

    checkpoint = sft_checkpoint
    model, tokenizer = from_pretrained(checkpoint), Tokenizer.from_dir(checkpoint)
    save_hf(model, tmp_path / "hf", tokenizer)
    generator = pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
    replies = 0
    for row in (chat_data / "val.jsonl").read_text().splitlines()[:6]:
        messages = conversation(json.loads(row))
        prompt = messages[:-1]
        system = prompt[0]["content"] if prompt[0]["role"] == "system" else None
        session = ChatSession(model, tokenizer, chat_template(tokenizer), system, max_new_tokens=24, temperature=0)
        session.history = prompt[1 if system else 0:-1]
        ours = session.reply(prompt[-1]["content"])
        theirs = generator(prompt, max_new_tokens=24, do_sample=False)[0]["generated_text"][-1]
        assert theirs["role"] == "assistant" and theirs["content"] == ours
        replies += bool(ours)
    assert replies >= 3


def test_chat_generate_chat_and_eval_chat_commands(sft_checkpoint, chat_data, tmp_path, capsys, monkeypatch):
    from compactlm.cli import main
    from compactlm.model.chat import ChatSession

    model, tokenizer = from_pretrained(sft_checkpoint), Tokenizer.from_dir(sft_checkpoint)
    question = "What does `textwrap.dedent` do?"
    expected = ChatSession(model, tokenizer, chat_template(tokenizer), "Be brief.", max_new_tokens=16,
                           temperature=0).reply(question)
    assert main(["generate", "--chat", "--checkpoint", str(sft_checkpoint), "--prompt", question, "--system",
                 "Be brief.", "--temperature", "0", "--max-new-tokens", "16"]) == 0
    assert capsys.readouterr().out == expected + "\n"

    lines = iter([question, "/reset", question, "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--checkpoint", str(sft_checkpoint), "--system", "Be brief.", "--temperature", "0",
                 "--max-new-tokens", "16"]) == 0
    out = capsys.readouterr().out
    assert out == f"{expected}\n{expected}\n"  # /reset: the same question in a fresh conversation

    assert main(["eval", "--checkpoint", str(sft_checkpoint), "--chat", str(chat_data / "val.jsonl"),
                 "--output", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "chat_results.json").read_text())
    assert result["conversations"] == 24 and 0 <= result["ended_turn"] <= 24 and len(result["samples"]) == 3
    assert f"assistant-token loss {result['assistant_loss']:.4f}" in capsys.readouterr().out
    # the validator of fine-tuning and eval --chat are one: the same held-out loss
    metrics = [json.loads(line) for line in (sft_checkpoint.parents[1] / "metrics.jsonl").read_text().splitlines()]
    assert result["assistant_loss"] == pytest.approx(metrics[-1]["val_loss"], rel=1e-4)


@pytest.mark.parametrize("name", ["sft-demo.yaml", "dpo-demo.yaml"])
def test_the_shipped_finetune_configs_load_and_name_the_shipped_data(name):
    from compactlm.commands import config_kind
    from compactlm.config.finetune import load_finetune_config

    path = DEMO.parents[1] / "configs" / name
    config = load_finetune_config(path)
    assert config_kind(str(path), None) == "finetune"
    assert (DEMO.parents[1] / config.data.train).is_file() and (DEMO.parents[1] / config.data.val).is_file()
    assert config.finetune.method == name.split("-")[0]
