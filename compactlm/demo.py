"""`compactlm demo` (`make demo`): the whole pipeline on the embedded corpus, on a CPU, in minutes.

prepare the demo corpus -> train a small Llama with TinyLlama's recipe and 7:3 mix -> validate
against a unigram baseline -> draw loss.png -> score the local multiple-choice task with
lm-evaluation-harness -> sample continuations -> fine-tune it into an assistant (SFT, Zephyr chat
template) and compare base and fine-tune on held-out questions -> print a summary.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np

PREPARE_CONFIG = "configs/prepare-demo.yaml"
TRAIN_CONFIG = "configs/demo.yaml"
SFT_CONFIG = "configs/sft-demo.yaml"
PROMPTS = ["The history of", "def read_file(path):", "KING HENRY:"]


def _section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def unigram_loss(mixture, val: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of the best context-free model: training-token frequencies of the mix."""
    probs = np.zeros(vocab_size)
    for counts, weight in zip(mixture.train_token_counts(vocab_size), mixture.weights):
        probs += weight * (counts + 1) / (counts.sum() + vocab_size)  # add-one smoothing
    return float(-np.log(probs[val[:, 1:].ravel()]).mean())


def plot_losses(run_dir: Path, baseline: float, out: Path):
    """loss.png: train and validation loss against tokens seen, and the unigram baseline."""
    from compactlm.plotting import pyplot, save_figure
    from compactlm.train.metrics import read_metrics, step_records, validation_records

    records = read_metrics(run_dir)
    train = [(r["tokens"], r["loss"]) for r in step_records(records)]
    val = [(r["tokens"], r["val_loss"]) for r in validation_records(records)]
    fig, ax = pyplot().subplots(figsize=(8, 4.5))
    ax.plot(*zip(*train), label="train loss", color="tab:blue", alpha=0.8)
    ax.plot(*zip(*val), "o-", label="validation loss", color="tab:orange")
    ax.axhline(baseline, linestyle="--", color="gray", label=f"unigram baseline ({baseline:.2f})")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("compactlm demo: a small Llama trained on the embedded corpus")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out)


def _evaluate_local(checkpoint: Path) -> dict | None:
    """The final checkpoint on the repo's local 4-choice task (tasks/compactlm_facts) through
    compactlm's lm-evaluation-harness backend; a failure here never stops the demo."""
    from compactlm.errors import CompactlmError

    started = time.perf_counter()
    try:
        from compactlm.eval.tasks import demo_evaluation

        entry = demo_evaluation(checkpoint)
    except (CompactlmError, OSError, ImportError) as exc:
        print(f"lm-eval evaluation skipped: {exc}")
        return None
    if entry is None:
        print("lm-eval evaluation skipped: lm-evaluation-harness is not installed (pip install 'compactlm[eval]')")
        return None
    acc, acc_norm = entry.get("acc"), entry.get("value")
    print(f"lm-evaluation-harness, local 4-choice task compactlm_facts ({entry.get('samples')} questions, "
          f"0-shot): acc {100 * acc:.1f}%, acc_norm {100 * acc_norm:.1f}% (chance 25%) "
          f"in {time.perf_counter() - started:.1f} s; more: compactlm eval --checkpoint {checkpoint} --tasks local")
    return entry


def _finetune(base: Path) -> dict:
    """SFT of the demo model; the held-out questions before and after (compactlm eval --chat)."""
    from compactlm.checkpoint.layout import latest_checkpoint
    from compactlm.config.finetune import load_finetune_config
    from compactlm.finetune.evaluate import evaluate_chat, format_chat_eval
    from compactlm.finetune.trainer import FinetuneTrainer

    config = load_finetune_config(SFT_CONFIG, [f"finetune.base={base}"])
    shutil.rmtree(config.run_dir, ignore_errors=True)
    FinetuneTrainer(config).fit()
    tuned = latest_checkpoint(config.run_dir)
    results = {"checkpoint": tuned}
    for name, checkpoint, template in (("base", base, "zephyr"), ("sft", tuned, "")):
        results[name] = evaluate_chat(checkpoint, config.data.val, template, samples=3 if name == "sft" else 0)
        print(f"{name}: {format_chat_eval(results[name])}")
    return results


def run_demo() -> None:
    import torch

    from compactlm.checkpoint.layout import latest_checkpoint
    from compactlm.checkpoint.model import from_pretrained
    from compactlm.config.train import load_train_config
    from compactlm.data.prepare import load_prepare_config, prepare
    from compactlm.model.generate import generate
    from compactlm.tokenizer.tokenizer import load_tokenizer
    from compactlm.train.trainer import Trainer

    started = time.perf_counter()
    _section("1/5 prepare the embedded corpus (data/demo: SlimPajama- and StarCoderData-style files)")
    manifests = prepare(load_prepare_config(PREPARE_CONFIG), progress=True)
    for name, m in manifests.items():
        skipped = ", ".join(f"{k} {v}" for s in m["sources"] for k, v in s["skipped"].items()) or "none"
        print(f"{name:>17}: {m['documents']:,} documents, {m['tokens']:,} tokens (rows skipped: {skipped})")

    _section("2/5 pretrain a small Llama on the CPU (TinyLlama's recipe, 7:3 natural language : code)")
    config = load_train_config(TRAIN_CONFIG)
    run_dir = Path(config.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo always starts fresh
    trainer = Trainer(config)
    baseline = unigram_loss(trainer.objective.mixture, trainer.validator.samples.numpy(), trainer.tokenizer.vocab_size)
    last = trainer.fit()
    checkpoint = latest_checkpoint(run_dir)

    _section("3/5 evaluate")
    plot_losses(run_dir, baseline, Path("loss.png"))
    print(f"validation loss {last['val_loss']:.3f} nats/token vs {baseline:.3f} for the unigram baseline "
          f"(token frequencies alone): the model predicts {math.exp(baseline - last['val_loss']):.1f}x better "
          f"per token; {last['val_bpb']:.2f} bits per byte of text")
    print("loss curves written to loss.png")
    local_eval = _evaluate_local(checkpoint)

    _section("4/5 sample (temperature 0.8, top-k 40)")
    model, tokenizer = from_pretrained(checkpoint), load_tokenizer(checkpoint)
    for i, prompt in enumerate(PROMPTS):
        ids = torch.tensor([tokenizer.encode(prompt, bos=True)])
        out = generate(model, ids, 60, temperature=0.8, top_k=40, eos_id=tokenizer.eos_id, seed=i)
        text = prompt + tokenizer.decode(out[0, ids.shape[1]:].tolist())
        print(f"--- {prompt!r}\n{text.strip()}\n")

    _section("5/5 fine-tune into an assistant (SFT on data/sft-demo, Zephyr template)")
    chat = _finetune(checkpoint)

    _section("summary")
    rows = [("model", f"{trainer.model_config.name}, {trainer.model.num_params():,} parameters"),
            ("data", f"{sum(m['tokens'] for m in manifests.values()):,} tokens, vocabulary {tokenizer.vocab_size}"),
            ("trained", f"{trainer.step} steps, {trainer.tokens_seen:,} tokens"),
            ("train loss (last step)", f"{last['loss']:.3f}"),
            ("validation loss", f"{last['val_loss']:.3f} (perplexity {last['val_ppl']:.1f})"),
            ("unigram baseline", f"{baseline:.3f}"),
            ("bits per byte", f"{last['val_bpb']:.3f}"),
            ("compactlm_facts (lm-eval)", "skipped" if local_eval is None else
             f"acc {100 * local_eval['acc']:.1f}%, acc_norm {100 * local_eval['value']:.1f}% (chance 25%)"),
            ("checkpoint", f"{checkpoint}  (compactlm convert to-hf --checkpoint ... --out ...)"),
            ("fine-tuned (SFT)", f"held-out assistant-token loss {chat['base']['assistant_loss']:.3f} -> "
             f"{chat['sft']['assistant_loss']:.3f}; replies ending their turn "
             f"{chat['base']['ended_turn_fraction']:.0%} -> {chat['sft']['ended_turn_fraction']:.0%}"),
            ("chat", f"compactlm chat --checkpoint {chat['checkpoint']}"),
            ("wall time", f"{time.perf_counter() - started:.0f} s")]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
