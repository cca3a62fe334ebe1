#!/usr/bin/env python3
"""Build the small instruction (SFT) and preference (DPO) demo dataset in ``data/sft-demo``.

Answers are the standard library's own docstring summaries (PSF-2.0), never model output; ``SOURCES.md``
documents the method.  ``--check`` writes nothing and exits 1 if the files on disk differ from a fresh build,
which is deterministic for one interpreter; another Python version has other docstrings, hence other files.
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import inspect
import json
import operator
import random
import re
import sys
import types
from pathlib import Path

from compactlm.fileio import atomic_write

# Side-effect-free imports.  Not ``posixpath``: it *is* ``os.path``, so its functions could straddle the split.
MODULES = """
    abc argparse ast base64 binascii bisect bz2 calendar cmath codecs collections configparser contextlib copy
    csv dataclasses datetime decimal difflib doctest email.utils enum fnmatch fractions functools getopt gettext
    glob gzip hashlib heapq hmac html http.cookies inspect ipaddress itertools json keyword locale logging lzma
    math mimetypes operator os.path pathlib plistlib pprint queue quopri random re reprlib sched secrets
    selectors shlex shutil signal socket sqlite3 statistics string stringprep struct subprocess tarfile tempfile
    textwrap threading time timeit tokenize traceback types typing unicodedata unittest urllib.parse uuid
    warnings weakref xml.etree.ElementTree zipfile zlib
""".split()

TEMPLATES = [
    "What does `{name}` do in Python?", "Briefly, what is `{name}` for?",
    "In the Python standard library, what is `{name}`?", "Give me a one-sentence summary of `{name}`.",
    "What is the purpose of `{name}` in the `{module}` module?",
    "Describe the {kind} `{name}` from Python's `{module}` module.",
]
SYSTEM_PROMPTS = [
    "You are a concise Python assistant.", "You are a helpful assistant who knows the Python standard library well.",
    "Answer questions about Python briefly and accurately.", "You are a programming tutor. Keep your answers short.",
    "Reply in one or two sentences.",
]

SEED = 20261201
SHARE_PROMPT_RESPONSE, SHARE_SYSTEM = 0.15, 0.30  # rows in {"prompt", "response"} form; with a system prompt
VAL_SHARE, VAL_MIN_ROWS = 0.10, 60  # SFT rows held out (whole modules): target share, floor
DPO_SHARE, DPO_MIN_VAL = 0.55, 50  # share of each split's items that also get a DPO pair; floor for val
# Modules with fewer own functions/classes also get methods, at most this many (sampled with the seed).
MIN_ITEMS_FOR_NO_METHODS, MAX_METHODS_PER_MODULE = 12, 30
SUMMARY_MIN, SUMMARY_MAX = 20, 300
MAX_ROW_CHARS, MAX_TOTAL_BYTES = 1200, 1_500_000
FORBIDDEN = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>"]

# A line that is only a call signature: "name(args)" optionally "-> result".
_SIGNATURE_LINE = re.compile(r"^([\w, ]+ = )?[A-Za-z_][\w.]*\(.*\)\s*((->|-->|=>).*)?$")
# A summary that starts with a signature: "name(args) -- text", "name(args) - Text", "name(args) Text".
_SIGNATURE_PREFIX = re.compile(r"^[A-Za-z_][\w.]*\(.*?\)\s*(?:--?\s*|(?=[A-Z]))")
# Left-over code rather than prose: "int -> date", "x.__contains__(y) <==> y in x", "a, b = f(X)".
_CODEISH = re.compile(r"->|<==>|^[\w, ]+ = |\(\)\s*--\s*$")
# Generic docstrings of slot wrappers and the like; not useful answers.
_GENERIC = re.compile(r"^(Initialize self|Create and return a new object|Return self|Implement |See help\(|"
                      r"Helper for pickle|Return repr\(self\)|Return str\(self\)|Return hash\(self\)|"
                      r"Return getattr|Implement setattr|Implement delattr)")

_by_module_and_name = operator.itemgetter("module", "name")
dump = functools.partial(json.dumps, ensure_ascii=False)  # one row, one line; UTF-8 kept readable


def summarize(doc: str | None) -> str | None:
    """Return the docstring's summary (first paragraph, one line) or None if unusable."""
    if not doc or not isinstance(doc, str):
        return None
    blocks = ([ln for ln in map(str.strip, p.splitlines()) if ln] for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)))
    # Skip the signature block that C functions without __text_signature__ open with.
    lines = next((p for p in blocks if p and not (all(_SIGNATURE_LINE.match(ln) for ln in p)
                                                      or _SIGNATURE_LINE.match(" ".join(p)))), None)
    if not lines or any(">>>" in ln for ln in lines):
        return None
    # Drop whole lines that are only a call signature, e.g. "dialect = csv.register_dialect(...)".
    text = " ".join(" ".join(ln for ln in lines if not _SIGNATURE_LINE.match(ln)).split())
    # "D.insert(index, object) -- insert object before index." -> "Insert object before index."
    text = _SIGNATURE_PREFIX.sub("", text, count=1)
    if not text or _CODEISH.search(text) or _GENERIC.match(text):
        return None
    text = text[0].upper() + text[1:] if re.match(r"[a-z]+ ", text) else text
    # Still not capitalised: the tail of a multi-line signature; a final ":" introduces a list or example.
    if not text[0].isupper() or text.endswith(":"):
        return None
    if text[-1].isalnum() or text[-1] in ")`'\"":
        text += "."
    return text if SUMMARY_MIN <= len(text) <= SUMMARY_MAX and all(ch >= " " for ch in text) else None


def _public_objects(module):
    """(name, object) for the public classes and routines of ``module``, by name."""
    public = getattr(module, "__all__", None)
    names = sorted({n for n in public if isinstance(n, str)}) if public is not None else dir(module)  # dir() sorts
    for name in (n for n in names if not n.startswith("_")):
        obj = getattr(module, name, None)
        # Without __all__, skip names imported from elsewhere; a C accelerator (_bisect) counts as the module.
        if (inspect.isclass(obj) or inspect.isroutine(obj)) and (
                public is not None or getattr(obj, "__module__", None) in (module.__name__, "_" + module.__name__)):
            yield name, obj


def _public_methods(cls):
    """(name, function) for the public methods defined in ``cls`` itself, by name."""
    for name, raw in sorted(cls.__dict__.items()):
        wrapped = isinstance(raw, (classmethod, staticmethod))
        if not name.startswith("_") and (wrapped or inspect.isfunction(raw) or inspect.ismethoddescriptor(raw)
                                         or inspect.isbuiltin(raw)):
            yield name, raw.__func__ if wrapped else raw


def _claim(seen: dict[int, object], obj) -> bool:
    """True the first time ``obj`` is met; holding it in ``seen`` keeps its id() from being reused."""
    return id(obj) not in seen and seen.setdefault(id(obj), obj) is obj


def _item(module: str, name: str, kind: str, obj) -> list[dict]:
    """The object as a one-item list, or no item if its docstring has no usable summary."""
    summary = summarize(getattr(obj, "__doc__", None))
    return [{"module": module, "name": name, "kind": kind, "summary": summary}] if summary else []


def collect_items(rng: random.Random) -> list[dict]:
    """One item per documented object; an object reachable from two places counts for the first."""
    seen: dict[int, object] = {}  # see _claim
    items: list[dict] = []
    for modname in MODULES:
        own, methods = [], []
        for name, obj in _public_objects(importlib.import_module(modname)):
            if not _claim(seen, obj):
                continue
            kind = ("exception" if issubclass(obj, BaseException) else "class") if inspect.isclass(obj) else "function"
            own += _item(modname, f"{modname}.{name}", kind, obj)
            for mname, func in _public_methods(obj) if inspect.isclass(obj) else ():
                if _claim(seen, func):
                    methods += _item(modname, f"{modname}.{name}.{mname}", "method", func)
        if len(own) < MIN_ITEMS_FOR_NO_METHODS:  # methods fill in for modules with few functions and classes
            if len(methods) > MAX_METHODS_PER_MODULE:
                keep = set(rng.sample(range(len(methods)), MAX_METHODS_PER_MODULE))
                methods = [m for i, m in enumerate(methods) if i in keep]
            own += methods
        items += own
    return items


def dedupe(items: list[dict]) -> list[dict]:
    """Drop repeated names and repeated answers (first occurrence, in module-list order, wins)."""
    seen: set[tuple[str, str]] = set()  # ("name", ...) and ("summary", ...) keys
    out = []
    for it in items:
        keys = {("name", it["name"]), ("summary", it["summary"].casefold())}
        if not keys & seen:
            seen |= keys
            out.append(it)
    return out


def pick_val_modules(items: list[dict], rng: random.Random) -> list[str]:
    """Whole modules, in seeded order, until about ``VAL_SHARE`` of the items are held out."""
    counts = collections.Counter(it["module"] for it in items)
    modules = sorted(counts)
    rng.shuffle(modules)
    target = max(VAL_MIN_ROWS, round(VAL_SHARE * len(items)))
    cap = max(target, round(1.4 * target))
    chosen, total = [], 0
    for m in modules:
        if total < target and total + counts[m] <= cap:
            chosen.append(m)
            total += counts[m]
    if total < target:
        raise SystemExit(f"could not hold out {target} rows by module (got {total})")
    return sorted(chosen)


def make_sft_row(question: str, answer: str, rng: random.Random) -> dict:
    r = rng.random()
    if r < SHARE_PROMPT_RESPONSE:
        return {"prompt": question, "response": answer}
    with_system = r < SHARE_PROMPT_RESPONSE + SHARE_SYSTEM
    system = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if with_system else []
    return {"messages": system + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def make_dpo_rows(split_items: list[dict], questions: dict[str, str], rng: random.Random, n: int) -> list[dict]:
    picked = sorted(rng.sample(split_items, n), key=_by_module_and_name)
    return [{"prompt": questions[it["name"]], "chosen": it["summary"],  # rejected: the answer for another module
             "rejected": rng.choice([o for o in split_items if o["module"] != it["module"]])["summary"]}
            for it in picked]


def _has_special(*texts: str) -> bool:
    return any(tok in text for text in texts for tok in FORBIDDEN)


def _require(condition: bool, message: str) -> None:
    if not condition:  # not `assert`: the checks must also run under `python -O`
        raise ValueError(f"validation failed: {message}")


def _validate_file(fname: str, rows: list[dict]) -> set[str]:
    """Check every row of one file and return the file's questions, which must be unique."""
    _require(rows, f"{fname}: no rows")
    for row in rows:
        texts = [v for m in row["messages"] for v in (m["content"], m["role"])] if "messages" in row else row.values()
        for text in texts:
            _require(isinstance(text, str) and text.strip(), f"{fname}: empty or non-str content in {row}")
            _require(not _has_special(text), f"{fname}: special token in {row}")
        _require(len(dump(row)) <= MAX_ROW_CHARS, f"{fname}: row longer than {MAX_ROW_CHARS} chars")
        if "chosen" in row:
            _require(row["chosen"] != row["rejected"], f"{fname}: chosen == rejected")
        elif "messages" in row:
            roles = [m["role"] for m in row["messages"]]
            _require(roles in (["user", "assistant"], ["system", "user", "assistant"]), f"{fname}: roles {roles}")
    questions = [next(m["content"] for m in r["messages"] if m["role"] == "user") if "messages" in r else r["prompt"]
                 for r in rows]
    _require(len(questions) == len(set(questions)), f"{fname}: duplicated question")
    return set(questions)


def validate(splits: dict[str, list[dict]], module_of: dict[str, str]) -> None:
    questions = {fname: _validate_file(fname, rows) for fname, rows in splits.items()}
    for fname, least in (("val.jsonl", VAL_MIN_ROWS), ("dpo-val.jsonl", DPO_MIN_VAL)):
        _require(len(splits[fname]) >= least, f"{fname} has fewer than {least} rows")
    # Each question belongs to one module, so disjoint modules also mean no question on both sides.
    train = {module_of[q] for q in questions["train.jsonl"] | questions["dpo-train.jsonl"]}
    val = {module_of[q] for q in questions["val.jsonl"] | questions["dpo-val.jsonl"]}
    _require(not train & val, f"modules in both splits: {sorted(train & val)}")


def sources_md(s: types.SimpleNamespace) -> str:
    def code_list(names: list[str]) -> str:
        return ", ".join(f"`{m}`" for m in names)
    table = "\n".join(f"| `{fname}` | {s.counts[fname]} | {s.sizes[fname]:,} |" for fname in s.counts)
    empty_modules = code_list(sorted(set(MODULES) - set(s.val_modules) - set(s.train_modules))) or "none"
    return f"""\
# SFT / DPO demo data: sources and licence

A small instruction dataset (questions about the Python standard library answered with
the summary line of the object's own docstring) and a matching preference dataset, for
compactlm's post-training demo. **No text was generated by a model**: every answer is
docstring text from CPython's standard library; every question and system prompt comes
from a small fixed list of templates written for this project.

## How it was built

```
.venv/bin/python scripts/build_sft_demo.py
```

Python used (`sys.version`, verbatim): `{sys.version.replace(chr(10), ' ')}`

**Another Python version gives other text** (docstrings change between releases), so
rebuild with the same interpreter to reproduce these files byte for byte. With the same
interpreter the build is deterministic (seed `random.Random({SEED})`, sorted names, no `hash()`); \
`scripts/build_sft_demo.py --check` verifies it.

Steps: import each module of a fixed list; take its public functions and classes
(`__all__` where defined, else public names defined in the module), and for modules with
fewer than {MIN_ITEMS_FOR_NO_METHODS} of these also the public methods of their classes (at most
{MAX_METHODS_PER_MODULE} per module, sampled with the seed; {s.n_methods} methods in all); an object
reachable from two modules counts for the first.
The answer is the docstring's first paragraph joined into one line
({SUMMARY_MIN}..{SUMMARY_MAX} characters; a leading call-signature block is skipped; paragraphs with
doctest `>>>` lines, generic slot-wrapper texts such as "Initialize self." and
repeated answers are dropped; a final full stop is added where the text has none).
Questions use one of {len(TEMPLATES)} templates; \
about {round(100 * SHARE_SYSTEM)}% of the rows carry a system prompt from a fixed
list of {len(SYSTEM_PROMPTS)}, about {round(100 * SHARE_PROMPT_RESPONSE)}% use the \
`{{"prompt", "response"}}` form, the rest
the Hugging Face chat form `{{"messages": [...]}}`. DPO rows pair the right summary
(`chosen`) with the summary of an object from another module of the same split
(`rejected`). Rows containing a chat special token (`<s>`, `</s>`, `<|im_start|>`, ...) are
dropped ({s.n_dropped} dropped in this build).

## Split

Split by module, not by row: the held-out modules, drawn with the seeded RNG, occur only
in `val.jsonl` and `dpo-val.jsonl`, never in the training files.

Held-out modules ({len(s.val_modules)}): {code_list(s.val_modules)}

Training modules ({len(s.train_modules)}): {code_list(s.train_modules)}

Modules of the list that gave no usable summary (so are in neither split): {empty_modules}

## Files

| file | rows | bytes |
|---|---|---|
{table}

## Licence

- Answer text (docstrings): Python Software Foundation License Version 2 (PSF-2.0),
  Copyright (c) 2001 Python Software Foundation; All Rights Reserved.
  See https://docs.python.org/3/license.html.
- Question templates, system prompts and the build script: part of this project,
  under the project's licence.
"""


def build() -> tuple[dict[str, bytes], types.SimpleNamespace]:
    rng = random.Random(SEED)  # drawn in a fixed order below: reordering the draws changes the output
    found = dedupe(collect_items(rng))
    items = sorted((it for it in found if not _has_special(it["name"], it["summary"])), key=_by_module_and_name)
    n_dropped = len(found) - len(items)  # chat special tokens are dropped before any row is made
    val_modules = pick_val_modules(items, rng)
    questions = {it["name"]: rng.choice(TEMPLATES).format(**it) for it in items}
    module_of = {questions[it["name"]]: it["module"] for it in items}
    _require(len(module_of) == len(items), "two objects got the same question")
    split_items = {"train": [it for it in items if it["module"] not in val_modules],
                   "val": [it for it in items if it["module"] in val_modules]}
    splits = {f"{split}.jsonl": [make_sft_row(questions[it["name"]], it["summary"], rng) for it in its]
              for split, its in split_items.items()}
    for split, its in split_items.items():
        n = round(DPO_SHARE * len(its))
        splits[f"dpo-{split}.jsonl"] = make_dpo_rows(
            its, questions, rng, n if split == "train" else min(len(its), max(n, DPO_MIN_VAL)))
    validate(splits, module_of)  # raises on a special token in any row: the items were filtered above
    files = {fname: "".join(dump(r) + "\n" for r in rows).encode("utf-8") for fname, rows in splits.items()}
    _require(sum(map(len, files.values())) <= MAX_TOTAL_BYTES, "the files are too large together")
    stats = types.SimpleNamespace(
        counts={fname: len(rows) for fname, rows in splits.items()}, sizes={f: len(d) for f, d in files.items()},
        val_modules=val_modules, train_modules=sorted({it["module"] for it in split_items["train"]}),
        n_methods=sum(it["kind"] == "method" for it in items), n_dropped=n_dropped,
        n_items=len(items), n_modules=len({it["module"] for it in items}))
    files["SOURCES.md"] = sources_md(stats).encode("utf-8")
    return files, stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "sft-demo")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the files on disk differ")
    args = parser.parse_args(argv)
    files, s = build()
    if args.check:
        bad = [f for f, data in files.items() if not (args.out / f).is_file() or (args.out / f).read_bytes() != data]
        for f in bad:
            print(f"differs: {args.out / f}", file=sys.stderr)
        print("up to date" if not bad else f"{len(bad)} file(s) differ")
        return 1 if bad else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for fname, data in files.items():
        atomic_write(args.out / fname, [data])
    print(f"{s.n_items} items from {s.n_modules} modules ({s.n_methods} methods); held out: {', '.join(s.val_modules)}")
    for fname, n in s.counts.items():
        print(f"  {fname}: {n} rows, {s.sizes[fname]:,} bytes")
    print(f"  total {sum(s.sizes.values()):,} bytes -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
