"""The `compactlm` command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import sys

from compactlm.errors import CompactlmError


def _cmd_presets(args) -> None:
    from compactlm.config.model import PRESETS

    print(f"{'preset':<16}{'layers':>7}{'d_model':>8}{'heads':>6}{'kv':>4}{'ffn':>6}"
          f"{'non-emb params':>16}{'total @32k vocab':>18}")
    for name, cfg in PRESETS.items():
        print(f"{name:<16}{cfg.n_layer:>7}{cfg.d_model:>8}{cfg.n_head:>6}{cfg.n_kv_head:>4}{cfg.ffn_dim:>6}"
              f"{cfg.non_embedding_params:>16,}{cfg.num_params:>18,}")


def _cmd_generate(args) -> None:
    import torch

    from compactlm.checkpoint.model import from_pretrained
    from compactlm.model.generate import generate
    from compactlm.tokenizer.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.checkpoint)
    if tokenizer is None:
        raise CompactlmError(f"{args.checkpoint}: no tokenizer.model or tokenizer.json beside the weights")
    model = from_pretrained(args.checkpoint, device=args.device)
    prompt = tokenizer.encode(args.prompt, bos=True)
    generated: list[int] = []
    printed = ""

    def stream(token: torch.Tensor) -> None:
        # Decode the whole continuation each time: SentencePiece spaces and multi-byte characters
        # only come out right in context.
        nonlocal printed
        generated.append(int(token[0]))
        text = tokenizer.decode(generated)
        if not text.endswith("\ufffd"):  # wait for the rest of a split UTF-8 character
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text

    sys.stdout.write(args.prompt)
    generate(model, torch.tensor([prompt]), args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
             top_p=args.top_p, eos_id=tokenizer.eos_id, seed=args.seed, on_token=stream)
    sys.stdout.write(tokenizer.decode(generated)[len(printed):] + "\n")


def _cmd_convert(args) -> None:
    from compactlm.checkpoint.model import from_pretrained, save_checkpoint
    from compactlm.convert import hf, litgpt
    from compactlm.tokenizer.tokenizer import load_tokenizer

    if args.direction == "to-hf":
        model, tokenizer = from_pretrained(args.checkpoint), load_tokenizer(args.checkpoint)
        hf.save_hf(model, args.out, tokenizer)
    elif args.direction == "consolidate":
        model, tokenizer = from_pretrained(args.checkpoint), load_tokenizer(args.checkpoint)
        save_checkpoint(model, args.out, tokenizer)
    elif args.direction == "from-hf":
        model, tokenizer = from_pretrained(args.src), load_tokenizer(args.src)
        save_checkpoint(model, args.out, tokenizer)
    else:
        model = litgpt.load_litgpt(args.checkpoint, args.config)
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        save_checkpoint(model, args.out, tokenizer)
    print(f"wrote {args.out} ({model.num_params():,} parameters"
          f"{', no tokenizer' if tokenizer is None else ', tokenizer ' + tokenizer.path.name})")


def _cmd_prepare(args) -> None:
    from compactlm.data.prepare import load_prepare_config, prepare

    config = load_prepare_config(args.config, args.overrides)
    for name, manifest in prepare(config, progress=not args.no_progress).items():
        skipped = sum(n for s in manifest["sources"] for n in s["skipped"].values())
        print(f"{name}: {manifest['documents']:,} documents, {manifest['tokens']:,} tokens in "
              f"{len(manifest['shards'])} shards ({skipped:,} rows skipped) -> {config.output_dir}/{name}")


def _cmd_train(args) -> None:
    from compactlm.config.train import load_train_config
    from compactlm.train.distributed import launched_by_torchrun
    from compactlm.train.trainer import train

    if args.nproc > 1 and not launched_by_torchrun():
        _relaunch_with_torchrun(args)
    train(load_train_config(args.config, args.overrides), resume=args.resume)


def _relaunch_with_torchrun(args) -> None:
    """`compactlm train --nproc N ...` = `torchrun --standalone --nproc-per-node N -m compactlm train ...`."""
    import os

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
               "-m", "compactlm", "train", args.config, *args.overrides, *(["--resume"] if args.resume else [])]
    sys.stdout.flush()
    os.execv(sys.executable, command)


def _cmd_plan(args) -> None:
    from compactlm.config.train import load_train_config
    from compactlm.data.readers import DataError
    from compactlm.errors import CheckpointError
    from compactlm.train.plan import format_plan, parse_size, setup_from_train_config

    # --micro-batch and --seq-len are config overrides, so the run is resolved exactly as `train` would.
    flags = [f"train.micro_batch={args.micro_batch}"] * (args.micro_batch is not None) + \
        [f"data.seq_len={args.seq_len}"] * (args.seq_len is not None)
    gpu_memory = parse_size(args.gpu_memory)
    train_config = load_train_config(args.config, [*args.overrides, *flags])
    try:
        config, setup = setup_from_train_config(train_config, args.gpus, vocab_size=args.vocab_size)
    except (DataError, CheckpointError) as exc:  # the data, hence the tokenizer, is not at hand
        raise CompactlmError(f"{exc} (or pass --vocab-size N to plan without the data)") from None
    print(format_plan(config, setup, gpu_memory, train_config.train.global_batch))


def _cmd_demo(args) -> None:
    from compactlm.demo import run_demo

    run_demo()


def _cmd_eval(args) -> None:
    from compactlm.eval.command import run

    run(args)


def _cmd_ladder(args) -> None:
    from compactlm.ladder.command import run

    run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compactlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("demo", help="the main job on the CPU, on built-in defaults").set_defaults(func=_cmd_demo)

    sub.add_parser("presets", help="list the model presets").set_defaults(func=_cmd_presets)

    prep = sub.add_parser("prepare", help="tokenise raw corpora into packed token shards",
                          description="Tokenise raw corpora into packed token shards. Any config key can be "
                          "overridden as KEY=VALUE, nested keys with dots: workers=4 tokenizer.path=tok.model")
    prep.add_argument("config", help="prepare config (YAML)")
    prep.add_argument("overrides", nargs="*", help="KEY=VALUE overrides (values parsed as YAML)")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(func=_cmd_prepare)

    tr = sub.add_parser("train", help="pretrain a model on prepared data",
                        description="Pretrain a model. Any config key can be overridden as KEY=VALUE after the "
                        "config file, nested keys with dots, values parsed as YAML: train.max_steps=200 "
                        "optim.lr=3e-4 model.preset=tinyllama-4m 'data.datasets=[{path: d, weight: 1}]'")
    tr.add_argument("config", help="train config (YAML), e.g. configs/demo.yaml")
    tr.add_argument("overrides", nargs="*", help="KEY=VALUE overrides")
    tr.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint of run_dir")
    tr.add_argument("--nproc", type=int, default=1, metavar="N",
                    help="processes on this machine (one per GPU; CPU ranks use gloo): shorthand for "
                    "`torchrun --standalone --nproc-per-node N -m compactlm train ...`; see docs/distributed.md")
    tr.set_defaults(func=_cmd_train)

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
    plan.set_defaults(func=_cmd_plan)

    gen = sub.add_parser("generate", help="stream a continuation of a prompt")
    gen.add_argument("--checkpoint", required=True, help="compactlm or Hugging Face checkpoint directory")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=100)
    gen.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, mps ...")
    gen.set_defaults(func=_cmd_generate)

    conv = sub.add_parser("convert", help="convert checkpoints to and from Hugging Face and lit-gpt formats")
    conv_sub = conv.add_subparsers(dest="direction", required=True)
    to_hf = conv_sub.add_parser("to-hf", help="compactlm checkpoint -> transformers LlamaForCausalLM directory")
    to_hf.add_argument("--checkpoint", required=True)
    to_hf.add_argument("--out", required=True)
    consolidate = conv_sub.add_parser("consolidate", help="sharded training checkpoint (any number of ranks) -> "
                                      "one model.safetensors checkpoint")
    consolidate.add_argument("--checkpoint", required=True, help="a checkpoints/step-XXXXXXXX directory")
    consolidate.add_argument("--out", required=True)
    from_hf = conv_sub.add_parser("from-hf", help="transformers Llama directory -> compactlm checkpoint")
    from_hf.add_argument("--src", required=True)
    from_hf.add_argument("--out", required=True)
    from_lit = conv_sub.add_parser("from-litgpt", help="lit-gpt / TinyLlama .pth checkpoint -> compactlm checkpoint")
    from_lit.add_argument("--checkpoint", required=True, help="lit_model.pth or TinyLlama iter-*.pth")
    from_lit.add_argument("--config", default="tinyllama-1.1b",
                          help="lit_config.json / model_config.yaml, or a preset name (default tinyllama-1.1b)")
    from_lit.add_argument("--tokenizer", default=None, help="tokenizer.model or tokenizer.json to carry along")
    from_lit.add_argument("--out", required=True)
    conv.set_defaults(func=_cmd_convert)

    from compactlm.eval.command import add_arguments as add_eval_arguments

    ev = sub.add_parser("eval", help="lm-evaluation-harness suites, evolution over a run, bits per byte")
    add_eval_arguments(ev)
    ev.set_defaults(func=_cmd_eval)

    lad = sub.add_parser("ladder", help="scaling-law ladder: size x tokens grids, isoFLOP profiles, ablations, fits",
                         description="Train a grid of points (each a normal run directory under OUT/points), "
                         "fit L(N, D) = E + A/N^alpha + B/D^beta and isoFLOP minima, write OUT/ladder.md and plots. "
                         "A re-run skips finished points and resumes interrupted ones. See docs/ladder.md.")
    lad.add_argument("config", help="ladder config (YAML), e.g. configs/ladder-demo.yaml")
    lad.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of the ladder config (jobs=2 fit.bootstrap=50)")
    lad.add_argument("--jobs", type=int, default=None, metavar="N", help="points trained at once (processes)")
    lad.add_argument("--dry-run", action="store_true", help="list the points and their cost, train nothing")
    lad.add_argument("--report-only", action="store_true", help="fit and report the finished points, train nothing")
    lad.set_defaults(func=_cmd_ladder)
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
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
