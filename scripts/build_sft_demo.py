#!/usr/bin/env python3
"""Build the small instruction (SFT) and preference (DPO) demo dataset in ``data/sft-demo``.

Every answer is the summary (first paragraph) of a standard-library docstring
(PSF-2.0) read from the running interpreter, so no text comes from a model and
the licence is clear.  Questions such as "What does `textwrap.dedent` do in
Python?" come from fixed templates.  Files, JSON lines, one object per line:

* ``train.jsonl`` / ``val.jsonl``: SFT rows, Hugging Face chat ``{"messages": [...]}``
  (with or without a system prompt) or ``{"prompt", "response"}``.
* ``dpo-train.jsonl`` / ``dpo-val.jsonl``: ``{"prompt", "chosen", "rejected"}``,
  the rejected answer being the summary of an object from another module.
* ``SOURCES.md``: provenance, licence, Python version, counts.

The split is by *module*, so val measures answers about APIs never trained on.

Usage::

    .venv/bin/python scripts/build_sft_demo.py            # (re)write data/sft-demo
    .venv/bin/python scripts/build_sft_demo.py --check    # exit 1 if the files differ

Deterministic for one interpreter (fixed seed, sorted names, no ``hash()``);
another Python version has other docstrings, hence other files.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import random
import re
import sys
import tempfile
from pathlib import Path

SEED = 20261201

# Modules that import without side effects.  ``posixpath`` is absent on purpose:
# it *is* ``os.path`` on POSIX, and listing both would put the same functions
# under two names (possibly on both sides of the split).
MODULES = [
    "abc", "argparse", "ast", "base64", "binascii", "bisect", "bz2",
    "calendar", "cmath", "codecs", "collections", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "doctest", "email.utils", "enum", "fnmatch", "fractions",
    "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq",
    "hmac", "html", "http.cookies", "inspect", "ipaddress", "itertools",
    "json", "keyword", "locale", "logging", "lzma", "math", "mimetypes",
    "operator", "os.path", "pathlib", "plistlib", "pprint", "queue",
    "quopri", "random", "re", "reprlib", "sched", "secrets", "selectors",
    "shlex", "shutil", "signal", "socket", "sqlite3", "statistics",
    "string", "stringprep", "struct", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "time", "timeit", "tokenize", "traceback",
    "types", "typing", "unicodedata", "unittest", "urllib.parse", "uuid",
    "warnings", "weakref", "xml.etree.ElementTree", "zipfile", "zlib",
]

TEMPLATES = [
    "What does `{name}` do in Python?",
    "Briefly, what is `{name}` for?",
    "In the Python standard library, what is `{name}`?",
    "Give me a one-sentence summary of `{name}`.",
    "What is the purpose of `{name}` in the `{module}` module?",
    "Describe the {kind} `{name}` from Python's `{module}` module.",
]

SYSTEM_PROMPTS = [
    "You are a concise Python assistant.",
    "You are a helpful assistant who knows the Python standard library well.",
    "Answer questions about Python briefly and accurately.",
    "You are a programming tutor. Keep your answers short.",
    "Reply in one or two sentences.",
]

SHARE_PROMPT_RESPONSE = 0.15  # rows in {"prompt", "response"} form
SHARE_SYSTEM = 0.30  # rows (of all) in chat form with a system prompt
VAL_SHARE = 0.10  # target share of SFT rows held out (by module)
VAL_MIN_ROWS = 60
DPO_SHARE = 0.55  # share of each split's items that also get a DPO pair
DPO_MIN_VAL = 50
MIN_ITEMS_FOR_NO_METHODS = 12  # modules with fewer functions/classes also get methods ...
MAX_METHODS_PER_MODULE = 30  # ... at most this many (sampled with the seed)

SUMMARY_MIN, SUMMARY_MAX = 20, 300
MAX_ROW_CHARS = 1200
MAX_TOTAL_BYTES = 1_500_000
FORBIDDEN = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>"]

# A line that is only a call signature: "name(args)" optionally "-> result".
_SIGNATURE_LINE = re.compile(r"^([\w, ]+ = )?[A-Za-z_][\w.]*\(.*\)\s*((->|-->|=>).*)?$")
# A summary that starts with a signature: "name(args) -- text", "name(args) - Text", "name(args) Text".
_SIGNATURE_PREFIX = re.compile(r"^[A-Za-z_][\w.]*\(.*?\)\s*(?:--?\s*|(?=[A-Z]))")
# Left-over code rather than prose: "int -> date", "x.__contains__(y) <==> y in x", "a, b = f(X)".
_CODEISH = re.compile(r"->|<==>|^[\w, ]+ = |\(\)\s*--\s*$")
# Generic docstrings of slot wrappers and the like; not useful answers.
_GENERIC = re.compile(
    r"^(Initialize self|Create and return a new object|Return self|Implement |"
    r"See help\(|Helper for pickle|Return repr\(self\)|Return str\(self\)|"
    r"Return hash\(self\)|Return getattr|Implement setattr|Implement delattr)"
)


# --------------------------------------------------------------------------- extraction


def _stripped_lines(paragraph: str) -> list[str]:
    return [ln.strip() for ln in paragraph.splitlines() if ln.strip()]


def _is_signature_block(lines: list[str]) -> bool:
    """C functions without ``__text_signature__`` open their docstring with one."""
    return all(_SIGNATURE_LINE.match(ln) for ln in lines) or bool(_SIGNATURE_LINE.match(" ".join(lines)))


def summarize(doc: str | None) -> str | None:
    """Return the docstring's summary (first paragraph, one line) or None if unusable."""
    if not doc or not isinstance(doc, str):
        return None
    paragraphs = [p for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]
    while paragraphs and _is_signature_block(_stripped_lines(paragraphs[0])):
        paragraphs.pop(0)
    if not paragraphs:
        return None
    lines = _stripped_lines(paragraphs[0])
    if any(">>>" in ln for ln in lines):
        return None
    # Drop whole lines that are only a call signature, e.g. "dialect = csv.register_dialect(...)".
    text = " ".join(" ".join(ln for ln in lines if not _SIGNATURE_LINE.match(ln)).split())
    # "D.insert(index, object) -- insert object before index." -> "Insert object before index."
    text = _SIGNATURE_PREFIX.sub("", text, count=1)
    if not text or _CODEISH.search(text) or _GENERIC.match(text):
        return None
    if re.match(r"[a-z]+ ", text):
        text = text[0].upper() + text[1:]
    # Not capitalised: the tail of a multi-line signature; a final ":" introduces a list or example.
    if not text[0].isupper() or text.endswith(":"):
        return None
    if text[-1].isalnum() or text[-1] in ")`'\"":
        text += "."
    if SUMMARY_MIN <= len(text) <= SUMMARY_MAX and all(ch >= " " for ch in text):
        return text
    return None


def _kind(obj) -> str:
    if not inspect.isclass(obj):
        return "function"
    return "exception" if issubclass(obj, BaseException) else "class"


def _public_objects(module):
    """(name, object) for the public classes and routines of ``module``, by name."""
    public = getattr(module, "__all__", None)
    if public is not None:
        names = sorted({n for n in public if isinstance(n, str) and not n.startswith("_")})
    else:
        names = [n for n in dir(module) if not n.startswith("_")]  # dir() is sorted
    for name in names:
        obj = getattr(module, name, None)
        if obj is None or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        # Without __all__, skip names imported from elsewhere; a C accelerator (_bisect) counts as the module.
        if public is None and getattr(obj, "__module__", None) not in (module.__name__, "_" + module.__name__):
            continue
        yield name, obj


def _public_methods(cls):
    """(name, function) for the public methods defined in ``cls`` itself, by name."""
    for name in sorted(cls.__dict__):
        raw = cls.__dict__[name]
        if name.startswith("_") or not (inspect.isfunction(raw) or inspect.ismethoddescriptor(raw)
                                        or isinstance(raw, (classmethod, staticmethod)) or inspect.isbuiltin(raw)):
            continue
        yield name, raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw


def _item(module: str, name: str, kind: str, obj) -> list[dict]:
    """The object as a one-item list, or an empty list if its docstring has no usable summary."""
    summary = summarize(getattr(obj, "__doc__", None))
    return [{"module": module, "name": name, "kind": kind, "summary": summary}] if summary else []


def _sample_in_order(seq: list, k: int, rng: random.Random) -> list:
    if len(seq) <= k:
        return seq
    keep = set(rng.sample(range(len(seq)), k))
    return [x for i, x in enumerate(seq) if i in keep]


def collect_items(rng: random.Random) -> list[dict]:
    """One item per object: module, dotted name, kind, summary; first module wins an object."""
    seen: dict[int, object] = {}  # holding the objects keeps their ids unique while we run

    def first_sight(obj) -> bool:
        if id(obj) in seen:
            return False
        seen[id(obj)] = obj
        return True

    items: list[dict] = []
    for modname in MODULES:
        module_items: list[dict] = []
        method_items: list[dict] = []
        for name, obj in _public_objects(importlib.import_module(modname)):
            if not first_sight(obj):
                continue
            module_items += _item(modname, f"{modname}.{name}", _kind(obj), obj)
            for mname, func in _public_methods(obj) if inspect.isclass(obj) else ():
                if first_sight(func):
                    method_items += _item(modname, f"{modname}.{name}.{mname}", "method", func)
        # Methods only fill in for modules with few functions and classes of their own.
        if len(module_items) < MIN_ITEMS_FOR_NO_METHODS:
            module_items += _sample_in_order(method_items, MAX_METHODS_PER_MODULE, rng)
        items += module_items
    return items


def dedupe(items: list[dict]) -> list[dict]:
    """Drop repeated names and repeated answers (first occurrence, in module-list order, wins)."""
    names: set[str] = set()
    summaries: set[str] = set()
    out = []
    for it in items:
        summary = it["summary"].casefold()
        if it["name"] not in names and summary not in summaries:
            names.add(it["name"])
            summaries.add(summary)
            out.append(it)
    return out


# --------------------------------------------------------------------------- rows


def pick_val_modules(items: list[dict], rng: random.Random) -> list[str]:
    counts: dict[str, int] = {}
    for it in items:
        counts[it["module"]] = counts.get(it["module"], 0) + 1
    modules = sorted(counts)
    rng.shuffle(modules)
    target = max(VAL_MIN_ROWS, round(VAL_SHARE * len(items)))
    cap = max(target, round(1.4 * target))
    chosen, total = [], 0
    for m in modules:
        if total >= target:
            break
        if total + counts[m] <= cap:
            chosen.append(m)
            total += counts[m]
    if total < target:
        raise SystemExit(f"could not hold out {target} rows by module (got {total})")
    return sorted(chosen)


def _by_module_and_name(it: dict) -> tuple[str, str]:
    return it["module"], it["name"]


def make_question(it: dict, rng: random.Random) -> str:
    return rng.choice(TEMPLATES).format(name=it["name"], module=it["module"], kind=it["kind"])


def make_sft_row(question: str, answer: str, rng: random.Random) -> dict:
    r = rng.random()
    if r < SHARE_PROMPT_RESPONSE:
        return {"prompt": question, "response": answer}
    system = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if r < SHARE_PROMPT_RESPONSE + SHARE_SYSTEM else []
    return {"messages": system + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def make_dpo_rows(split_items: list[dict], questions: dict[str, str], rng: random.Random, n: int) -> list[dict]:
    rows = []
    for it in sorted(rng.sample(split_items, n), key=_by_module_and_name):
        neg = rng.choice([o for o in split_items if o["module"] != it["module"]])
        rows.append({"prompt": questions[it["name"]], "chosen": it["summary"], "rejected": neg["summary"]})
    return rows


def row_texts(row: dict) -> list:
    if "messages" in row:
        return [m["content"] for m in row["messages"]] + [m["role"] for m in row["messages"]]
    return list(row.values())


def row_question(row: dict) -> str:
    if "messages" in row:
        return next(m["content"] for m in row["messages"] if m["role"] == "user")
    return row["prompt"]


def dump(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False)


def _has_special(*texts: str) -> bool:
    return any(tok in text for text in texts for tok in FORBIDDEN)


def _require(condition: bool, message: str) -> None:
    if not condition:  # not `assert`: the checks must also run under `python -O`
        raise ValueError(f"validation failed: {message}")


def _validate_file(fname: str, rows: list[dict]) -> None:
    _require(rows, f"{fname}: no rows")
    for row in rows:
        for text in row_texts(row):
            _require(isinstance(text, str) and text.strip(), f"{fname}: empty or non-str content in {row}")
            _require(not _has_special(text), f"{fname}: special token in {row}")
        _require(len(dump(row)) <= MAX_ROW_CHARS, f"{fname}: row of {len(dump(row))} chars")
        if "chosen" in row:
            _require(row["chosen"] != row["rejected"], f"{fname}: chosen == rejected")
        elif "messages" in row:
            roles = [m["role"] for m in row["messages"]]
            _require(roles in (["user", "assistant"], ["system", "user", "assistant"]), f"{fname}: roles {roles}")
    questions = [row_question(r) for r in rows]
    _require(len(questions) == len(set(questions)), f"{fname}: duplicated question")


def validate(splits: dict[str, list[dict]], module_of: dict[str, str]) -> None:
    for fname, rows in splits.items():
        _validate_file(fname, rows)
    for fname, least in (("val.jsonl", VAL_MIN_ROWS), ("dpo-val.jsonl", DPO_MIN_VAL)):
        _require(len(splits[fname]) >= least, f"{fname} has fewer than {least} rows")
    q = {fname.removesuffix(".jsonl"): {row_question(r) for r in rows} for fname, rows in splits.items()}
    for a, b in (("train", "val"), ("dpo-train", "dpo-val"), ("dpo-train", "val"), ("dpo-val", "train")):
        _require(not q[a] & q[b], f"a question in both {a} and {b}")
    train_mods = {module_of[x] for x in q["train"] | q["dpo-train"]}
    val_mods = {module_of[x] for x in q["val"] | q["dpo-val"]}
    _require(not train_mods & val_mods, f"modules in both splits: {sorted(train_mods & val_mods)}")


# --------------------------------------------------------------------------- output


def _code_list(names: list[str]) -> str:
    return ", ".join(f"`{m}`" for m in names)


def sources_md(counts: dict[str, int], sizes: dict[str, int], val_modules: list[str],
               train_modules: list[str], n_methods: int, n_dropped: int) -> str:
    empty_modules = _code_list(sorted(set(MODULES) - set(val_modules) - set(train_modules))) or "none"
    table = "\n".join(f"| `{fname}` | {counts[fname]} | {sizes[fname]:,} |" for fname in counts)
    version = sys.version.replace("\n", " ")
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

Python used (`sys.version`, verbatim): `{version}`

**Another Python version gives other text** (docstrings change between releases), so
rebuild with the same interpreter to reproduce these files byte for byte. With the same
interpreter the build is deterministic (seed `random.Random({SEED})`, sorted names, no `hash()`); \
`scripts/build_sft_demo.py --check` verifies it.

Steps: import each module of a fixed list; take its public functions and classes
(`__all__` where defined, else public names defined in the module), and for modules with
fewer than {MIN_ITEMS_FOR_NO_METHODS} of these also the public methods of their classes (at most
{MAX_METHODS_PER_MODULE} per module, sampled with the seed; {n_methods} methods in all); an object
reachable from two modules counts for the first.
The answer is the docstring's first paragraph joined into one line
({SUMMARY_MIN}..{SUMMARY_MAX} characters; a leading call-signature block is skipped; paragraphs with
doctest `>>>` lines, generic slot-wrapper texts such as "Initialize self." and
repeated answers are dropped; a final full stop is added where the text has none).
Questions use one of {len(TEMPLATES)} templates; \
about {round(100 * SHARE_SYSTEM)}% of the rows carry a system prompt from a fixed
list of {len(SYSTEM_PROMPTS)}, about {round(100 * SHARE_PROMPT_RESPONSE)}% use the `{{"prompt", "response"}}` form, the rest
the Hugging Face chat form `{{"messages": [...]}}`. DPO rows pair the right summary
(`chosen`) with the summary of an object from another module of the same split
(`rejected`). Rows containing a chat special token (`<s>`, `</s>`, `<|im_start|>`, ...) are
dropped ({n_dropped} dropped in this build).

## Split

Split by module, not by row: the held-out modules, drawn with the seeded RNG, occur only
in `val.jsonl` and `dpo-val.jsonl`, never in the training files.

Held-out modules ({len(val_modules)}): {_code_list(val_modules)}

Training modules ({len(train_modules)}): {_code_list(train_modules)}

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


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build() -> tuple[dict[str, bytes], dict]:
    rng = random.Random(SEED)
    items = dedupe(collect_items(rng))
    # Objects whose name or text holds a chat special token are dropped before any row is made.
    clean = sorted((it for it in items if not _has_special(it["name"], it["summary"])), key=_by_module_and_name)
    n_dropped = len(items) - len(clean)
    items = clean
    val_modules = pick_val_modules(items, rng)
    questions = {it["name"]: make_question(it, rng) for it in items}
    module_of = {questions[it["name"]]: it["module"] for it in items}
    _require(len(module_of) == len(items), "two objects got the same question")

    split_items = {"train": [it for it in items if it["module"] not in val_modules],
                   "val": [it for it in items if it["module"] in val_modules]}
    # All SFT rows before any DPO row: the order in which the seeded RNG is drawn fixes the output.
    splits = {f"{split}.jsonl": [make_sft_row(questions[it["name"]], it["summary"], rng) for it in its]
              for split, its in split_items.items()}
    for split, its in split_items.items():
        n = round(DPO_SHARE * len(its))
        splits[f"dpo-{split}.jsonl"] = make_dpo_rows(
            its, questions, rng, n if split == "train" else min(len(its), max(n, DPO_MIN_VAL)))
    for fname, rows in splits.items():  # a safety net: the items were already filtered
        splits[fname] = [r for r in rows if not _has_special(dump(r))]
        n_dropped += len(rows) - len(splits[fname])
    validate(splits, module_of)

    files = {fname: "".join(dump(r) + "\n" for r in rows).encode("utf-8") for fname, rows in splits.items()}
    _require(sum(map(len, files.values())) <= MAX_TOTAL_BYTES, "the files are too large together")
    counts = {fname: len(rows) for fname, rows in splits.items()}
    sizes = {fname: len(data) for fname, data in files.items()}
    train_modules = sorted({it["module"] for it in split_items["train"]})
    n_methods = sum(it["kind"] == "method" for it in items)
    files["SOURCES.md"] = sources_md(counts, sizes, val_modules, train_modules, n_methods, n_dropped).encode("utf-8")
    info = {"counts": counts, "sizes": sizes, "val_modules": val_modules, "n_items": len(items),
            "n_methods": n_methods, "n_modules": len({it["module"] for it in items})}
    return files, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "sft-demo")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the files on disk differ")
    args = parser.parse_args(argv)
    files, info = build()
    if args.check:
        bad = [f for f, data in files.items() if not (args.out / f).is_file() or (args.out / f).read_bytes() != data]
        for f in bad:
            print(f"differs: {args.out / f}", file=sys.stderr)
        print("up to date" if not bad else f"{len(bad)} file(s) differ")
        return 1 if bad else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for fname, data in files.items():
        atomic_write(args.out / fname, data)
    print(f"{info['n_items']} items from {info['n_modules']} modules ({info['n_methods']} methods); "
          f"held out: {', '.join(info['val_modules'])}")
    for fname, n in info["counts"].items():
        print(f"  {fname}: {n} rows, {info['sizes'][fname]:,} bytes")
    print(f"  total {sum(info['sizes'].values()):,} bytes -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
