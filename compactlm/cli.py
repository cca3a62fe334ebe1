"""The `compactlm` command: one subcommand per pipeline stage.

This module parses arguments and is the one error boundary: an expected failure prints one line
`error: <file or key>: <problem>; <what to do>` and exits 1; Ctrl-C / SIGTERM exit 128 + the signal
after saving a checkpoint; anything else is a bug and says so (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys

from compactlm import __version__, commands
from compactlm.errors import CompactlmError, first_line


def _run_parser(sub, name: str, summary: str, description: str, config_help: str) -> argparse.ArgumentParser:
    """A command that makes a run directory: CONFIG, KEY=VALUE overrides, --resume, --overwrite."""
    p = sub.add_parser(name, help=summary, description=description)
    p.add_argument("config", help=config_help)
    p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint of run_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in run_dir (its checkpoints, metrics and config are deleted)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compactlm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"compactlm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("demo", help="the main job on the CPU, on built-in defaults").set_defaults(func=commands.demo)

    sub.add_parser("presets", help="list the model presets").set_defaults(func=commands.presets)

    prep = sub.add_parser("prepare", help="tokenise raw corpora into packed token shards",
                          description="Tokenise raw corpora into packed token shards. Any config key can be "
                          "overridden as KEY=VALUE, nested keys with dots: workers=4 tokenizer.path=tok.model")
    prep.add_argument("config", help="prepare config (YAML)")
    prep.add_argument("overrides", nargs="*", help="KEY=VALUE overrides (values parsed as YAML)")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(func=commands.prepare)

    tr = _run_parser(sub, "train", "pretrain a model on prepared data",
                     "Pretrain a model. Any config key can be overridden as KEY=VALUE after the config file, "
                     "nested keys with dots, values parsed as YAML: train.max_steps=200 optim.lr=3e-4 "
                     "model.preset=tinyllama-4m 'data.datasets=[{path: d, weight: 1}]'",
                     "train config (YAML), e.g. configs/demo.yaml")
    tr.add_argument("--nproc", type=int, default=1, metavar="N",
                    help="processes on this machine (one per GPU; CPU ranks use gloo): shorthand for "
                    "`torchrun --standalone --nproc-per-node N -m compactlm train ...`; see docs/distributed.md")
    tr.set_defaults(func=commands.train)

    ft = _run_parser(sub, "finetune", "SFT or DPO (full or LoRA) from a checkpoint, on chat data",
                     "Fine-tune a checkpoint on conversations (SFT) or preference pairs (DPO), every weight or "
                     "LoRA adapters, on the pretraining trainer (same checkpoints, --resume, metrics, torchrun). "
                     "KEY=VALUE overrides as for train. See docs/finetune.md",
                     "finetune config (YAML), e.g. configs/sft-demo.yaml")
    ft.set_defaults(func=commands.finetune)

    plan = sub.add_parser("plan", help="memory per GPU of a training config, and the largest micro-batch that fits",
                          description="Per-GPU memory of a training config: parameters, gradients, optimizer "
                          "state, activations (with and without activation checkpointing) and logits, and the "
                          "largest micro-batch that fits. Example: compactlm plan configs/tinyllama-1.1b.yaml "
                          "--gpus 16 --gpu-memory 40GiB")
    plan.add_argument("config", help="train config (YAML)")
    plan.add_argument("overrides", nargs="*", help="KEY=VALUE overrides")
    plan.add_argument("--gpus", type=int, default=1, help="ranks in all (FSDP shards over them)")
    plan.add_argument("--gpu-memory", default="80GiB", help="memory of one GPU: 40GiB, 80GB, 24G ...")
    plan.add_argument("--micro-batch", type=int, default=None, help="default: the config's train.micro_batch")
    plan.add_argument("--seq-len", type=int, default=None, help="default: the config's data.seq_len")
    plan.add_argument("--vocab-size", type=int, default=None,
                      help="plan without the prepared data: the tokenizer's vocabulary size (default: read the "
                      "tokenizer as `compactlm train` does, e.g. Llama-2's 32000)")
    plan.set_defaults(func=commands.plan)

    gen = sub.add_parser("generate", help="stream a continuation of a prompt")
    gen.add_argument("--checkpoint", required=True, help="compactlm or Hugging Face checkpoint directory, or a GGUF file")
    gen.add_argument("--prompt", required=True, help="text to continue (BOS is added, special tokens are text)")
    gen.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate (default 100)")
    gen.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default 0.8)")
    gen.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    gen.add_argument("--top-p", type=float, default=None, help="sample from the smallest set of tokens whose "
                     "probability reaches p, in (0, 1]")
    gen.add_argument("--seed", type=int, default=None, help="random seed of the sampling (default: unseeded)")
    gen.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, mps ...")
    gen.add_argument("--draft", default=None, metavar="CKPT",
                     help="speculative decoding: a smaller model with the same tokenizer proposes tokens, the "
                     "checkpoint verifies them in one pass (same output distribution; greedy output identical)")
    gen.add_argument("--draft-tokens", type=int, default=4, metavar="K",
                     help="tokens the draft proposes per round (default 4)")
    gen.add_argument("--chat", action="store_true", help="the prompt is a user message: render it with the "
                     "checkpoint's chat template and print the assistant's reply only")
    gen.add_argument("--system", default=None, help="with --chat: a system prompt")
    gen.set_defaults(func=commands.generate)

    chat = sub.add_parser("chat", help="talk to a fine-tuned model in the terminal (its chat template, streaming)",
                          description="An interactive chat: each line you type is a user message; the reply "
                          "streams as it is generated. /reset forgets the conversation, /exit (or Ctrl-D) quits.")
    chat.add_argument("--checkpoint", required=True, help="compactlm or Hugging Face checkpoint directory, or a GGUF file")
    chat.add_argument("--system", default=None, help="a system prompt for the whole conversation")
    chat.add_argument("--template", default="", help="zephyr, chatml or a .jinja file (default: the checkpoint's)")
    chat.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    chat.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy (default 0.7)")
    chat.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    chat.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling threshold in (0, 1] (default 0.9)")
    chat.add_argument("--seed", type=int, default=None, help="random seed of the sampling (default: unseeded)")
    chat.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, mps ...")
    chat.set_defaults(func=commands.chat)

    conv = sub.add_parser("convert", help="convert checkpoints to and from Hugging Face, GGUF and lit-gpt formats")
    conv_sub = conv.add_subparsers(dest="direction", required=True)
    to_hf = conv_sub.add_parser("to-hf", help="compactlm checkpoint -> transformers LlamaForCausalLM directory")
    to_hf.add_argument("--checkpoint", required=True, help="a compactlm checkpoint directory")
    to_hf.add_argument("--out", required=True, help="the directory to write")
    consolidate = conv_sub.add_parser("consolidate", help="sharded training checkpoint (any number of ranks) -> "
                                      "one model.safetensors checkpoint")
    consolidate.add_argument("--checkpoint", required=True, help="a checkpoints/step-XXXXXXXX directory")
    consolidate.add_argument("--out", required=True, help="the directory to write")
    from_hf = conv_sub.add_parser("from-hf", help="transformers Llama directory -> compactlm checkpoint")
    from_hf.add_argument("--src", required=True, help="a transformers Llama directory (config.json + weights)")
    from_hf.add_argument("--out", required=True, help="the directory to write")
    from_lit = conv_sub.add_parser("from-litgpt", help="lit-gpt / TinyLlama .pth checkpoint -> compactlm checkpoint")
    from_lit.add_argument("--checkpoint", required=True, help="lit_model.pth or TinyLlama iter-*.pth")
    from_lit.add_argument("--config", default="tinyllama-1.1b",
                          help="lit_config.json / model_config.yaml, or a preset name (default tinyllama-1.1b)")
    from_lit.add_argument("--tokenizer", default=None, help="tokenizer.model or tokenizer.json to carry along")
    from_lit.add_argument("--out", required=True, help="the directory to write")
    to_gguf = conv_sub.add_parser("to-gguf", help="compactlm or HF checkpoint -> one GGUF file for llama.cpp",
                                  description="Write a GGUF file llama.cpp runs (llama-cli, llama-server, "
                                  "llama-cpp-python): the model, its tokenizer and its chat template. See docs/deploy.md.")
    to_gguf.add_argument("--checkpoint", required=True, help="a compactlm or Hugging Face checkpoint directory")
    to_gguf.add_argument("--out", required=True, help="the .gguf file to write")
    to_gguf.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16", "q8_0", "q4_0"],
                         help="weights' type: f32 (exact), f16, bf16, q8_0 (8-bit blocks) or q4_0 (4-bit blocks; "
                         "embedding and head in q8_0); norms stay f32 (default f32)")
    from_gguf = conv_sub.add_parser("from-gguf", help="llama.cpp GGUF file (f32/f16/bf16 or quantized) -> "
                                    "compactlm checkpoint (dequantized to float32)")
    from_gguf.add_argument("--gguf", required=True, help="a Llama GGUF file")
    from_gguf.add_argument("--out", required=True, help="the directory to write")
    for direction in (to_hf, consolidate, from_hf, from_lit, to_gguf, from_gguf):
        direction.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    conv.set_defaults(func=commands.convert)

    from compactlm.eval.command import add_arguments as add_eval_arguments

    ev = sub.add_parser("eval", help="lm-evaluation-harness suites, evolution over a run, bits per byte")
    add_eval_arguments(ev)
    ev.set_defaults(func=commands.evaluate)

    lad = sub.add_parser("ladder", help="scaling-law ladder: size x tokens grids, isoFLOP profiles, ablations, fits",
                         description="Train a grid of points (each a normal run directory under OUT/points), "
                         "fit L(N, D) = E + A/N^alpha + B/D^beta and isoFLOP minima, write OUT/ladder.md and plots. "
                         "A re-run skips finished points and resumes interrupted ones. See docs/ladder.md.")
    lad.add_argument("config", help="ladder config (YAML), e.g. configs/ladder-demo.yaml")
    lad.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of the ladder config (jobs=2 fit.bootstrap=50)")
    lad.add_argument("--jobs", type=int, default=None, metavar="N", help="points trained at once (processes)")
    lad.add_argument("--dry-run", action="store_true", help="list the points and their cost, train nothing")
    lad.add_argument("--report-only", action="store_true", help="fit and report the finished points, train nothing")
    lad.set_defaults(func=commands.ladder)
    ver = sub.add_parser("verdict", help="what over-training buys under a scaling law: TinyLlama's 1.1B x 3T, or yours",
                         description="Under L(N, D) = E + A/N^alpha + B/D^beta: the predicted loss of N parameters "
                         "trained on D tokens, the compute-optimal model at the same compute, the compute the "
                         "optimal frontier needs for the same loss, and with --inference-tokens the cheapest model "
                         "once generation is paid for (Sardana et al. 2023). Laws: published ones (Hoffmann et al. "
                         "2022; Besiroglu et al. 2024) or a ladder's own fit (its ladder.json).")
    ver.add_argument("--law", action="append", default=None, metavar="NAME|LADDER_JSON",
                     help="hoffmann2022, besiroglu2024, or a ladder.json (repeatable; default: both published laws)")
    ver.add_argument("--params", type=float, default=1.1e9, help="N, as the law counts parameters (default 1.1e9)")
    ver.add_argument("--tokens", type=float, default=3e12, help="D, training tokens (default 3e12)")
    ver.add_argument("--inference-tokens", type=float, default=0.0, metavar="T",
                     help="tokens to be generated over the model's life (2N FLOPs each), e.g. 1e12")
    ver.set_defaults(func=commands.verdict)

    cfg = sub.add_parser("config", help="show a config's keys: type, value, default and meaning")
    cfg_sub = cfg.add_subparsers(dest="action", required=True)
    show = cfg_sub.add_parser("show", help="every key of a config, resolved with the overrides",
                              description="Print every key of a train, prepare or ladder config with its type, "
                              "value (after the KEY=VALUE overrides), default and meaning. Without CONFIG: the "
                              "train config's defaults.")
    show.add_argument("config", nargs="?", default=None, help="a config file (YAML); its kind is recognised")
    show.add_argument("overrides", nargs="*", help="KEY=VALUE overrides")
    show.add_argument("--kind", choices=sorted(commands.CONFIG_KINDS), default=None,
                      help="the kind of config (default: recognised from its keys)")
    show.set_defaults(func=commands.config_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may come after options too, where argparse leaves them unparsed.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args)
    except CompactlmError as exc:
        if args.debug:
            raise
        code = getattr(exc, "exit_code", 1)
        print(f"{'stopped' if code > 128 else 'error'}: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (`| head`): not an error
        sys.stdout = open(os.devnull, "w")  # nothing left to flush at exit
        return 0
    except OSError as exc:  # the disk is full, a permission is missing, ...: the user's to fix
        if args.debug:
            raise
        print(f"error: {exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or first_line(exc)}",
              file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the boundary: anything else is a bug in compactlm
        if args.debug:
            raise
        print(f"error: internal error ({type(exc).__name__}: {first_line(exc)}); this is a bug in compactlm: "
              "rerun with --debug for the traceback and report it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
