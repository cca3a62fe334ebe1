"""What each `compactlm` subcommand does (cli.py parses the arguments and draws the error boundary).

Every command checks its inputs (config keys, flags, files) before it imports torch or starts work,
so a mistake costs a second, not a model load, and leaves nothing half-written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from compactlm.errors import CompactlmError, ConfigError


def presets(args) -> None:
    from compactlm.config.model import PRESETS

    print(f"{'preset':<16}{'layers':>7}{'d_model':>8}{'heads':>6}{'kv':>4}{'ffn':>6}"
          f"{'non-emb params':>16}{'total @32k vocab':>18}")
    for name, cfg in PRESETS.items():
        print(f"{name:<16}{cfg.n_layer:>7}{cfg.d_model:>8}{cfg.n_head:>6}{cfg.n_kv_head:>4}{cfg.ffn_dim:>6}"
              f"{cfg.non_embedding_params:>16,}{cfg.num_params:>18,}")


def check_sampling(args) -> None:
    """The sampling flags of `generate`, checked before the model is loaded."""
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    if args.temperature < 0:
        raise ConfigError(f"--temperature {args.temperature}: must be >= 0 (0 is greedy)")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k {args.top_k}: must be at least 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p {args.top_p}: must be in (0, 1]")


def generate(args) -> None:
    from compactlm.checkpoint.layout import require_checkpoint

    check_sampling(args)
    if args.draft is not None and args.draft_tokens < 1:
        raise CompactlmError(f"--draft-tokens {args.draft_tokens}: must be at least 1")
    if args.chat and args.draft is not None:
        raise CompactlmError("--chat and --draft: speculative decoding of chat replies is not supported yet")
    if args.system is not None and not args.chat:
        raise CompactlmError("--system needs --chat")
    path = require_checkpoint(args.checkpoint)
    draft_path = require_checkpoint(args.draft) if args.draft is not None else None
    import torch

    from compactlm.checkpoint.model import from_pretrained
    from compactlm.model.generate import generate as run_generate
    from compactlm.model.speculative import speculative_generate
    from compactlm.tokenizer.tokenizer import DecodeStream, load_tokenizer, require_tokenizer

    tokenizer = require_tokenizer(path)
    model = from_pretrained(path, device=args.device)
    if draft_path is not None:
        draft_tokenizer = load_tokenizer(draft_path)
        if draft_tokenizer is None or draft_tokenizer.hash != tokenizer.hash:
            raise CompactlmError(f"{draft_path}: the draft model's tokenizer differs from {path}'s; speculative "
                                 "decoding needs both to use the same one")
        draft = from_pretrained(draft_path, device=args.device)
    if args.chat:
        session = _chat_session(model, tokenizer, "", args.system, args)
        session.reply(args.prompt, on_text=_write)
        sys.stdout.write("\n")
        return
    prompt = tokenizer.encode(args.prompt, bos=True)
    streamed = DecodeStream(tokenizer)

    def stream(token: torch.Tensor) -> None:
        _write(streamed.push(int(token[0])))

    sys.stdout.write(args.prompt)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, eos_id=tokenizer.eos_id,
                    seed=args.seed, on_token=stream)
    if draft_path is None:
        run_generate(model, torch.tensor([prompt]), args.max_new_tokens, **sampling)
    else:
        _, stats = speculative_generate(model, draft, torch.tensor([prompt]), args.max_new_tokens,
                                        draft_tokens=args.draft_tokens, **sampling)
    sys.stdout.write(streamed.text[len(streamed.shown):] + "\n")
    if draft_path is not None:
        print(f"draft: {stats.accepted}/{stats.proposed} proposed tokens accepted ({stats.acceptance_rate:.0%}), "
              f"{stats.target_calls} target passes for {len(streamed.ids)} tokens", file=sys.stderr)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _chat_session(model, tokenizer, template_name: str, system: str | None, args):
    from compactlm.model.chat import ChatSession
    from compactlm.tokenizer.chat import chat_template

    return ChatSession(model, tokenizer, chat_template(tokenizer, template_name), system, args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def chat(args) -> None:
    from compactlm.checkpoint.layout import require_checkpoint

    check_sampling(args)
    path = require_checkpoint(args.checkpoint)
    from compactlm.checkpoint.model import from_pretrained
    from compactlm.tokenizer.tokenizer import require_tokenizer

    session = _chat_session(from_pretrained(path, device=args.device), require_tokenizer(path), args.template,
                            args.system, args)
    print(f"chatting with {path} (/reset forgets the conversation, /exit or Ctrl-D quits)", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return
        if line.strip() == "/exit":
            return
        if line.strip() == "/reset":
            session.reset()
            continue
        if line.strip():
            session.reply(line, on_text=_write)
            sys.stdout.write("\n")


def finetune(args) -> None:
    from compactlm.config.finetune import load_finetune_config

    config = load_finetune_config(args.config, args.overrides)  # checked before torch is imported
    from compactlm.finetune.trainer import finetune as run_finetune

    run_finetune(config, resume=args.resume, overwrite=args.overwrite)


def verdict(args) -> None:
    import json

    from compactlm.ladder.fit import LawFit
    from compactlm.ladder.verdict import PUBLISHED, format_verdict, verdict as law_verdict

    if args.params <= 0 or args.tokens <= 0 or args.inference_tokens < 0:
        raise ConfigError("--params and --tokens must be positive, --inference-tokens >= 0")
    for name in args.law or list(PUBLISHED):
        if name in PUBLISHED:
            law, source = PUBLISHED[name]
        else:
            try:
                fit = json.loads(Path(name).read_text())["fit"]
                law = LawFit(**{k: float(fit[k]) for k in ("E", "A", "alpha", "B", "beta")})
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CompactlmError(f"--law {name}: not {', '.join(PUBLISHED)} nor a ladder.json with a fitted law "
                                     f"({type(exc).__name__}: {exc})") from None
            source = f"the law fitted by the ladder in {name} (its N, data and tokenizer)"
        print(format_verdict(name, source, law_verdict(law, args.params, args.tokens, args.inference_tokens)))


def convert(args) -> None:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise CompactlmError(f"{out}: already exists; choose another --out, or pass --overwrite to replace it")
    source = _convert_source(args)
    from compactlm.checkpoint.model import from_pretrained, save_checkpoint
    from compactlm.convert import gguf, hf, litgpt
    from compactlm.tokenizer.tokenizer import load_tokenizer

    if args.direction == "from-litgpt":
        model = litgpt.load_litgpt(source, args.config)
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    else:
        model, tokenizer = from_pretrained(source), load_tokenizer(source)
    if args.direction == "to-gguf":
        if tokenizer is None:
            raise CompactlmError(f"{source}: no tokenizer.model or tokenizer.json beside the weights; a GGUF file "
                                 "needs the tokenizer")
        gguf.export_gguf(model, out, tokenizer, args.dtype)
        print(f"wrote {out} ({model.num_params():,} parameters, {args.dtype}, {out.stat().st_size / 2**20:.1f} MiB)")
        return
    (hf.save_hf if args.direction == "to-hf" else save_checkpoint)(model, out, tokenizer)
    print(f"wrote {out} ({model.num_params():,} parameters"
          f"{', no tokenizer' if tokenizer is None else ', tokenizer ' + tokenizer.path.name})")


def _convert_source(args) -> Path:
    """The model a conversion reads, checked before torch is imported."""
    from compactlm.checkpoint.layout import require_checkpoint

    if args.direction == "from-litgpt":
        return Path(args.checkpoint)
    if args.direction == "from-gguf":
        if not Path(args.gguf).is_file():
            raise CompactlmError(f"{args.gguf}: no such GGUF file")
        return Path(args.gguf)
    return require_checkpoint(args.src if args.direction == "from-hf" else args.checkpoint)


def prepare(args) -> None:
    from compactlm.data.prepare import load_prepare_config, prepare as run_prepare

    config = load_prepare_config(args.config, args.overrides)
    for name, manifest in run_prepare(config, progress=not args.no_progress).items():
        skipped = sum(n for s in manifest["sources"] for n in s["skipped"].values())
        print(f"{name}: {manifest['documents']:,} documents, {manifest['tokens']:,} tokens in "
              f"{len(manifest['shards'])} shards ({skipped:,} rows skipped) -> {config.output_dir}/{name}")


def train(args) -> None:
    from compactlm.config.train import load_train_config

    config = load_train_config(args.config, args.overrides)  # checked before torch is imported
    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: must be at least 1")
    from compactlm.train.distributed import launched_by_torchrun

    if args.nproc > 1 and not launched_by_torchrun():
        _relaunch_with_torchrun(args)
    from compactlm.train.trainer import train as run_train

    run_train(config, resume=args.resume, overwrite=args.overwrite)


def _relaunch_with_torchrun(args) -> None:
    """`compactlm train --nproc N ...` = `torchrun --standalone --nproc-per-node N -m compactlm train ...`."""
    flags = [flag for flag, on in (("--resume", args.resume), ("--overwrite", args.overwrite)) if on]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
               "-m", "compactlm", "train", args.config, *args.overrides, *flags]
    sys.stdout.flush()
    os.execv(sys.executable, command)


def plan(args) -> None:
    from compactlm.config.train import load_train_config
    from compactlm.data.readers import DataError
    from compactlm.errors import CheckpointError
    from compactlm.train.plan import format_plan, parse_size, setup_from_train_config

    if args.gpus < 1:
        raise ConfigError(f"--gpus {args.gpus}: must be at least 1")
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


def demo(args) -> None:
    from compactlm.demo import run_demo

    run_demo()


def evaluate(args) -> None:
    from compactlm.eval.command import run

    run(args)


def ladder(args) -> None:
    from compactlm.ladder.command import run

    run(args)


# ---- compactlm config show -------------------------------------------------------------------------
CONFIG_KINDS = {"train": ("compactlm.config.train", "TrainConfig"),
                "finetune": ("compactlm.config.finetune", "FinetuneConfig"),
                "prepare": ("compactlm.data.prepare", "PrepareConfig"),
                "ladder": ("compactlm.ladder.config", "LadderConfig")}


def config_kind(path: str | None, kind: str | None) -> str:
    """train, prepare or ladder: as asked, else from the keys the YAML file uses."""
    if kind or path is None:
        return kind or "train"
    from compactlm.config.loader import read_yaml

    data = read_yaml(path)
    if set(data) & {"base", "sizes", "budgets", "ablation", "out_dir"}:
        return "ladder"
    if "output_dir" in data or isinstance(data.get("datasets"), dict):
        return "prepare"
    if "finetune" in data:
        return "finetune"
    return "train"


def config_show(args) -> None:
    import importlib

    from compactlm.config.loader import describe, failed_checks, load_config

    kind = config_kind(args.config, args.kind)
    module, name = CONFIG_KINDS[kind]
    cls = getattr(importlib.import_module(module), name)
    if args.config is None and kind != "train":
        raise CompactlmError(f"compactlm config show --kind {kind} needs a CONFIG file (its required keys have no "
                             "defaults)")
    config = load_config(cls, args.config, args.overrides, check=False)  # show it, then say what is wrong
    rows = [(key, type_name, _short(value), _short(default), meaning)
            for key, type_name, value, default, meaning in describe(config)]
    print(f"# {kind} config{' ' + args.config if args.config else ' (defaults)'}: every key, its type, "
          "value, default and meaning")
    widths = [min(40, max(len(str(r[i])) for r in rows)) for i in range(3)]
    for key, type_name, value, default, meaning in rows:
        note = "" if value == default else f"  (default {default})"
        print(f"{key:<{widths[0]}}  {type_name:<{widths[1]}}  {value:<{widths[2]}}  # {meaning}{note}")
    for key, problem in failed_checks(config):
        print(f"note: {key}: {problem}")


def _short(value) -> str:
    import json

    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
