"""Prepare throughput: tokens/s from raw .jsonl.zst to token shards, three contenders side by side.

    .venv/bin/python bench/prepare.py [--files 8] [--repeat 2] [--repeats 3] [--work DIR] [--json PATH]

Inputs are built from the demo SlimPajama corpus (data/demo/slimpajama/train), repeated `--repeat`
times, in two layouts holding the same documents in the same order:
- "many files": re-split into `--files` .jsonl.zst files of similar size;
- "single file": one .jsonl.zst file.
Every row is read as a plain `files` source (text field "text", no set filter), so all contenders
produce the same number of tokens; whitespace-only documents (which compactlm skips) are left out.

Contenders, each timed wall-clock end to end (pool start-up included), alternating within a repeat:
- "tokenizer alone": texts already in memory, `SentencePieceProcessor.encode(texts, num_threads=cores)`;
- "compactlm prepare": `compactlm.data.prepare.prepare` with one worker per core, fresh output dir;
- "original": TinyLlama's scripts/prepare_slimpajama.py design, re-implemented here: one process per
  core, the file list divided by whole files (np.array_split), each worker streams its files through
  zstandard + io.TextIOWrapper line by line, json.loads each row, encodes one document per call and
  appends EOS, packing lit-gpt `LITPKDS` chunks of 2049 * 1024 uint16 tokens.
Tokens are counted with one EOS per document everywhere. Ratios use each contender's best time (the
run least disturbed by other load on the machine; medians are printed beside them).
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo" / "slimpajama" / "train"
GGUF = REPO / "tests" / "assets" / "ggml-vocab-llama-spm.gguf"
CHUNK_SIZE = 2049 * 1024  # TinyLlama's chunk_size: (block_size 2048 + 1) * 1024
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # honours taskset


# ---- inputs --------------------------------------------------------------------------------------
def read_demo_rows() -> list[dict]:
    import zstandard

    rows = []
    for path in sorted(DEMO.rglob("*.jsonl.zst")):
        with open(path, "rb") as raw, io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw),
                                                       encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    if isinstance(row.get("text"), str) and row["text"].strip():
                        rows.append(row)
    return rows


def write_zst(path: Path, lines: list[str]) -> None:
    import zstandard

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress("".join(lines).encode("utf-8")))


def build_inputs(work: Path, n_files: int, repeat: int) -> dict[str, Path]:
    """Two layouts of the same documents: `n_files` files of similar size, and one file."""
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in read_demo_rows()] * repeat
    sizes = np.cumsum([len(line.encode("utf-8")) for line in lines])
    # Cut where the running size crosses k/n of the total: contiguous parts of similar size.
    cuts = [0, *np.searchsorted(sizes, sizes[-1] * np.arange(1, n_files) / n_files).tolist(), len(lines)]
    many, single = work / "inputs" / "many", work / "inputs" / "single"
    for d in (many, single):
        shutil.rmtree(d, ignore_errors=True)
    for k in range(n_files):
        write_zst(many / f"part-{k:03d}.jsonl.zst", lines[cuts[k]:cuts[k + 1]])
    write_zst(single / "all.jsonl.zst", lines)
    return {"many files": many, "single file": single}


# ---- contender 1: the tokenizer alone --------------------------------------------------------------
def load_texts(directory: Path) -> list[str]:
    import zstandard

    texts = []
    for path in sorted(directory.glob("*.jsonl.zst")):
        with zstandard.open(path, "rt", encoding="utf-8") as f:
            texts.extend(json.loads(line)["text"] for line in f)
    return texts


def run_tokenizer_alone(sp, texts: list[str]) -> int:
    ids = sp.encode(texts, num_threads=CORES)
    return sum(map(len, ids)) + len(ids)  # + one EOS per document


# ---- contender 2: compactlm prepare ----------------------------------------------------------------
def run_compactlm(tokenizer_model: Path, source: Path, out: Path, workers: int) -> tuple[int, int]:
    from compactlm.config.loader import load_config
    from compactlm.data.prepare import PrepareConfig, prepare

    cfg = load_config(PrepareConfig, data={
        "output_dir": str(out), "tokenizer": {"path": str(tokenizer_model)}, "workers": workers,
        "datasets": {"nl": {"sources": [{"kind": "files", "path": str(source)}]}}})
    manifest = prepare(cfg, progress=False)["nl"]
    return manifest["tokens"], manifest["documents"]


# ---- contender 3: TinyLlama's prepare_slimpajama.py design -----------------------------------------
class PackedDatasetBuilder:
    """lit-gpt's packed_dataset.PackedDatasetBuilder (the parts TinyLlama's preparation uses)."""

    def __init__(self, outdir: Path, prefix: str, chunk_size: int, sep_token: int):
        self._outdir, self._prefix, self._chunk_size = outdir, prefix, chunk_size
        self._sep_token = sep_token
        self._dtype = np.uint16  # dtype="auto" with a vocabulary under 65500
        self._arr = np.full(chunk_size, sep_token, dtype=self._dtype)
        self._idx, self._counter = 0, 0

    def _write_chunk(self) -> None:
        filename = os.path.join(self._outdir, f"{self._prefix}_{self._counter:010d}.bin")
        with open(filename, "wb") as f:
            f.write(b"LITPKDS")
            f.write(struct.pack("<Q", 1))
            f.write(struct.pack("<B", 8))  # code of uint16 in lit-gpt's dtypes table
            f.write(struct.pack("<Q", self._chunk_size))
            f.write(self._arr.tobytes(order="C"))
        self._counter += 1
        self._arr.fill(self._sep_token)
        self._idx = 0

    def add_array(self, arr: np.ndarray) -> None:
        while self._idx + arr.shape[0] > self._chunk_size:
            part_len = self._chunk_size - self._idx
            self._arr[self._idx:self._idx + part_len] = arr[:part_len]
            self._write_chunk()
            arr = arr[part_len:]
        arr_len = arr.shape[0]
        self._arr[self._idx:self._idx + arr_len] = arr
        self._idx += arr_len

    def write_reminder(self) -> None:
        self._write_chunk()


def original_worker(tokenizer_model: str, filenames: list[str], destination: str, process_id: int) -> int:
    import sentencepiece
    import zstandard

    sp = sentencepiece.SentencePieceProcessor(model_file=tokenizer_model)
    eos = sp.eos_id()
    builder = PackedDatasetBuilder(Path(destination), f"train_slimpajama_{process_id}", CHUNK_SIZE, sep_token=eos)
    n_tokens = 0
    for filepath in filenames:
        with open(filepath, "rb") as raw, io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw),
                                                           encoding="utf-8") as f:
            for row in f:
                text = json.loads(row)["text"]
                ids = sp.encode(text)
                ids.append(eos)
                builder.add_array(np.array(ids, dtype=np.uint16))
                n_tokens += len(ids)
    builder.write_reminder()
    return n_tokens


def run_original(tokenizer_model: Path, source: Path, out: Path, workers: int) -> int:
    out.mkdir(parents=True)
    filenames = sorted(glob.glob(str(source / "*.jsonl.zst")))
    # TinyLlama: np.array_split(filenames, cpu_count()), one process per subset. With fewer files than
    # cores some subsets are empty (TinyLlama's worker raises on those); they get no process here.
    subsets = [list(s) for s in np.array_split(filenames, workers) if len(s)]
    with mp.get_context("fork").Pool(len(subsets)) as pool:
        counts = pool.starmap(original_worker, [(str(tokenizer_model), s, str(out), i) for i, s in enumerate(subsets)])
    return sum(counts)


def busy_fraction(seconds: float = 1.0) -> float | None:
    """Share of the machine's CPU time spent busy over `seconds` (Linux), before this bench starts."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    try:
        (t0, i0), _ = sample(), time.sleep(seconds)
        t1, i1 = sample()
    except OSError:
        return None
    return 1 - (i1 - i0) / max(t1 - t0, 1)


# ---- driver --------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8, help="files in the 'many files' case")
    parser.add_argument("--repeat", type=int, default=2, help="copies of the demo corpus in each input")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each contender")
    parser.add_argument("--workers", type=int, default=CORES, help="processes (compactlm and original)")
    parser.add_argument("--tokenizer", default="", help="SentencePiece tokenizer.model (default: Llama-2's, "
                                                        "extracted from tests/assets)")
    parser.add_argument("--work", default="", help="directory for inputs and outputs (default: a temp dir)")
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args()

    import sentencepiece

    import compactlm

    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="prepbench-")
    work = Path(args.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        model = Path(args.tokenizer) if args.tokenizer else work / "llama" / "tokenizer.model"
        if not model.is_file():
            from compactlm.tokenizer.tokenizer import Tokenizer

            model.parent.mkdir(parents=True, exist_ok=True)
            Tokenizer(GGUF).save(model.parent)
        t0 = time.perf_counter()
        inputs = build_inputs(work, args.files, args.repeat)
        texts = load_texts(inputs["single file"])
        sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
        input_bytes = {case: sum(p.stat().st_size for p in d.glob("*.jsonl.zst")) for case, d in inputs.items()}
        text_bytes = sum(len(t.encode("utf-8")) for t in texts)
        machine = f"{os.cpu_count()} cores ({CORES} usable), {platform.processor() or platform.machine()}, {platform.platform()}, " \
                  f"Python {platform.python_version()}"
        versions = f"sentencepiece {sentencepiece.__version__}, compactlm {compactlm.__version__}, numpy {np.__version__}"
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        print(f"machine: {machine}")
        print(f"versions: {versions}")
        print(f"input: {len(texts)} documents, {text_bytes / 1e6:.1f} MB of text (demo corpus x{args.repeat}); "
              f"many files: {args.files} x ~{input_bytes['many files'] / args.files / 1e6:.1f} MB zst, "
              f"single file: {input_bytes['single file'] / 1e6:.1f} MB zst (built in {time.perf_counter() - t0:.1f} s)")
        busy = busy_fraction()
        print(f"workers: {args.workers}; {args.repeats} timed runs each, contenders alternating; "
              f"CPU busy before start: {'?' if busy is None else f'{busy:.0%}'}")
        if busy is not None and busy > 0.1:
            print("WARNING: the machine is busy with other work; parallel contenders will be slowed the most")
        print(flush=True)

        contenders = [("in memory", "tokenizer alone")] + [(case, name) for case in inputs
                                                          for name in ("compactlm prepare", "original")]
        times = {c: [] for c in contenders}
        tokens = {c: set() for c in contenders}
        for r in range(args.repeats):
            for case, name in contenders:
                out = work / "out" / f"{name.split()[0]}-{case.split()[0]}-{r}"
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                if name == "tokenizer alone":
                    n = run_tokenizer_alone(sp, texts)
                elif name == "compactlm prepare":
                    n, docs = run_compactlm(model, inputs[case], out, args.workers)
                    assert docs == len(texts), (docs, len(texts))
                else:
                    n = run_original(model, inputs[case], out, args.workers)
                seconds = time.perf_counter() - start
                shutil.rmtree(out, ignore_errors=True)
                times[(case, name)].append(seconds)
                tokens[(case, name)].add(n)
                print(f"  run {r + 1}: {case:>11} | {name:<17} {n:>12,} tokens {seconds:7.2f} s "
                      f"{n / seconds / 1e6:6.3f} M tokens/s  (load avg {os.getloadavg()[0]:.2f})", flush=True)

        counts = set().union(*tokens.values())
        rows = []
        for case, name in contenders:
            (n,) = tokens[(case, name)]
            best, median = min(times[(case, name)]), statistics.median(times[(case, name)])
            rows.append({"case": case, "contender": name, "tokens": n, "seconds_best": best,
                         "seconds_median": median, "tokens_per_s_best": n / best, "tokens_per_s_median": n / median,
                         "runs_s": times[(case, name)]})
        rate = {(r["case"], r["contender"]): r["tokens_per_s_median"] for r in rows}
        rate_best = {(r["case"], r["contender"]): r["tokens_per_s_best"] for r in rows}
        print(f"\n{'case':<12} {'contender':<18} {'tokens':>12} {'s (median)':>11} {'s (best)':>9} "
              f"{'M tok/s (median)':>17} {'M tok/s (best)':>15}")
        for r in rows:
            print(f"{r['case']:<12} {r['contender']:<18} {r['tokens']:>12,} {r['seconds_median']:>11.2f} "
                  f"{r['seconds_best']:>9.2f} {r['tokens_per_s_median'] / 1e6:>17.3f} {r['tokens_per_s_best'] / 1e6:>15.3f}")
        print(f"token counts {'identical' if len(counts) == 1 else 'DIFFER: ' + str(sorted(counts))} "
              f"across contenders\n")

        ratios = []
        alone = ("in memory", "tokenizer alone")
        for case in inputs:
            ratios.append((f"compactlm / tokenizer alone ({case})", (case, "compactlm prepare"), alone, 0.9))
        ratios.append(("compactlm / original (many files)", ("many files", "compactlm prepare"),
                       ("many files", "original"), 1.0))
        ratios.append(("compactlm / original (single file)", ("single file", "compactlm prepare"),
                       ("single file", "original"), 1.5))
        ratio_rows = []
        # Ratios of best times: the run least disturbed by anything else on the machine.
        print(f"{'ratio':<45} {'best':>7} {'median':>7} {'target':>7}")
        for label, a, b, target in ratios:
            med, best = rate[a] / rate[b], rate_best[a] / rate_best[b]
            ok = "ok" if best >= target else "MISSED"
            print(f"{label:<45} {best:>7.3f} {med:>7.3f} {'>= ' + str(target):>7}  {ok}")
            ratio_rows.append({"ratio": label, "best": best, "median": med, "target": target, "met": best >= target})

        if args.json:
            Path(args.json).write_text(json.dumps({
                "command": [sys.executable, *sys.argv], "machine": machine, "versions": versions,
                "cpu_count": os.cpu_count(), "cores_usable": CORES, "workers": args.workers, "repeat": args.repeat, "files": args.files,
                "repeats": args.repeats, "documents": len(texts), "text_bytes": text_bytes,
                "input_bytes": input_bytes, "cpu_busy_before": busy, "tokens_identical": len(counts) == 1, "results": rows,
                "ratios": ratio_rows}, indent=2))
            print(f"\nwrote {args.json}")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
