"""A small raw corpus in SlimPajama and StarCoderData layouts, from real text already on this machine."""

import inspect
import json
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

SETS = ["RedPajamaC4", "RedPajamaBook", "RedPajamaWikipedia", "RedPajamaGithub"]


def stdlib_texts(n: int) -> list[str]:
    """Docstrings (prose) and sources (code) of standard-library modules, in a fixed order."""
    import argparse, collections, csv, difflib, email.parser, json.decoder, logging, pathlib, string, textwrap  # noqa
    modules = [argparse, collections, csv, difflib, email.parser, json.decoder, logging, pathlib, string, textwrap]
    texts = []
    for module in modules:
        for _, obj in sorted(vars(module).items()):
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 200 and doc not in texts:
                texts.append(inspect.cleandoc(doc))
    return texts[:n]


def c_headers(n: int) -> list[str]:
    include = Path(sysconfig.get_paths()["include"])
    return [p.read_text(errors="replace") for p in sorted(include.glob("*.h"))[:n]]


def python_sources(n: int) -> list[str]:
    import json.encoder, json.scanner, json.tool, string, textwrap, shlex, fnmatch, glob, bisect, heapq  # noqa
    return [inspect.getsource(m) for m in (json.encoder, json.scanner, json.tool, string, textwrap, shlex, fnmatch,
                                           glob, bisect, heapq)][:n]


def write_jsonl_zst(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))


def build_raw_corpus(root: Path) -> dict:
    """Writes the corpus; returns what a correct pipeline must find in it."""
    prose = stdlib_texts(60)
    rows = [{"text": t, "meta": {"redpajama_set_name": SETS[i % 3]}} for i, t in enumerate(prose)]
    github = [{"text": src, "meta": {"redpajama_set_name": "RedPajamaGithub"}} for src in python_sources(4)]
    all_rows = rows[:30] + github[:2] + rows[30:] + github[2:]
    write_jsonl_zst(root / "slimpajama/train/chunk1/example_train_0.jsonl.zst", all_rows[:33])
    write_jsonl_zst(root / "slimpajama/train/chunk2/example_train_1.jsonl.zst", all_rows[33:])
    py, c = python_sources(10), c_headers(12)
    for lang, docs in (("python", py), ("c", c)):
        for k, part in enumerate((docs[: len(docs) // 2], docs[len(docs) // 2:])):
            path = root / f"starcoderdata/{lang}/train-{k:05d}-of-00002.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"content": part, "id": [str(i) for i in range(len(part))]}), path,
                           row_group_size=3)
    return {"nl_texts": [r["text"] for r in all_rows if r["meta"]["redpajama_set_name"] != "RedPajamaGithub"],
            "github_rows": len(github), "code_texts": c + py,  # languages are read in sorted order
            "python_texts": py, "c_texts": c}
