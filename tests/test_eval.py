"""Evaluation (issue 6): the compactlm lm-eval backend against lm-eval's own `hf` backend on the
exported model, the evolution command, bits per byte, and one-line errors. Offline: local tasks only."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("lm_eval")

from compactlm.checkpoint.model import build_model, save_checkpoint  # noqa: E402
from compactlm.cli import main  # noqa: E402
from compactlm.convert.hf import save_hf  # noqa: E402
from compactlm.errors import CompactlmError  # noqa: E402
from compactlm.tokenizer.tokenizer import Tokenizer  # noqa: E402
from tests.conftest import random_config, tiny_train_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tasks"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")


def _export(tokenizer_file: Path, root: Path, seed: int = 0):
    """A random model for this tokenizer, saved as a compactlm checkpoint and as a transformers dir."""
    tok = Tokenizer(tokenizer_file)
    torch.manual_seed(seed)
    model = build_model(random_config(vocab_size=tok.vocab_size, max_seq_len=96, n_layer=2, d_model=64))
    with torch.no_grad():  # larger weights than the init: a peaked, tie-free distribution for greedy parity
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, 0.08)
    save_checkpoint(model, root / "compactlm", tok)
    save_hf(model, root / "hf", tok)
    return root / "compactlm", root / "hf"


@pytest.fixture(scope="module", params=["bpe", "spm"])
def exported(request, tmp_path_factory):
    """(compactlm checkpoint, HF dir) for a byte-level BPE tokenizer.json and a Llama-style SentencePiece model
    (whose exported tokenizer adds BOS, as Llama's does)."""
    tokenizer_file = request.getfixturevalue("bpe_tokenizer_file" if request.param == "bpe" else "spm_tokenizer_file")
    return _export(tokenizer_file, tmp_path_factory.mktemp(f"exported-{request.param}"))


@pytest.fixture(scope="module")
def bpe_exported(bpe_tokenizer_file, tmp_path_factory):
    return _export(bpe_tokenizer_file, tmp_path_factory.mktemp("exported-bpe-only"))


@pytest.fixture(scope="module")
def backends(exported):
    from lm_eval.models.huggingface import HFLM

    from compactlm.eval.harness import CompactLM

    ours = CompactLM(str(exported[0]), batch_size=8, progress=False)
    theirs = HFLM(pretrained=str(exported[1]), batch_size=8, device="cpu", dtype="float32")
    return ours, theirs


def _requests(*args):
    return [SimpleNamespace(args=a) for a in args]


def test_loglikelihoods_equal_the_hf_backend_request_by_request(backends):
    ours, theirs = backends
    questions = [json.loads(line) for line in (TASKS / "compactlm_facts.jsonl").read_text().splitlines()[:12]]
    reqs = [(f"Question: {q['question']}\nAnswer:", f" {c}") for q in questions for c in q["choices"]]
    long_context = "def read_file(path):\n    return open(path).read()\n" * 20  # longer than the context: truncated
    reqs += [("", "The whole text is the continuation."), ("Trailing spaces move  ", "to the continuation"),
             (long_context, " and the end"), ("x", long_context[:70]), ("Same context", " a"), ("Same context", " a")]
    a = ours.loglikelihood(_requests(*reqs), disable_tqdm=True)
    b = theirs.loglikelihood(_requests(*reqs), disable_tqdm=True)
    assert len(a) == len(b) == len(reqs)
    for (lp_a, greedy_a), (lp_b, greedy_b) in zip(a, b):
        assert lp_a == pytest.approx(lp_b, abs=1e-4)
        assert greedy_a == greedy_b
    assert a[-1] == a[-2]


def test_rolling_loglikelihood_equals_the_hf_backend(backends):
    ours, theirs = backends
    texts = [("import json\n" + json.__doc__[:1000],), ("Short text.",)]
    a = ours.loglikelihood_rolling(_requests(*texts), disable_tqdm=True)
    b = theirs.loglikelihood_rolling(_requests(*texts), disable_tqdm=True)
    assert len(ours.tok_encode(texts[0][0])) > 3 * ours.max_length  # several windows
    assert a == pytest.approx(b, abs=1e-4)


def test_generate_until_equals_the_hf_backend(backends):
    ours, theirs = backends
    gen = {"until": ["\n\n", "e"], "max_gen_toks": 12, "do_sample": False}
    reqs = [("def add(a, b):", gen), ("The capital of France is", gen),
            ("x", {"until": ["\n"], "max_gen_toks": 20, "do_sample": False})]
    assert ours.generate_until(_requests(*reqs), disable_tqdm=True) == \
        theirs.generate_until(_requests(*reqs), disable_tqdm=True)


def test_local_tasks_score_the_same_through_both_backends(backends):
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS), include_defaults=False)
    tasks = ["compactlm_facts", "compactlm_completion"]
    runs = [lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=True, verbosity="ERROR",
                                    bootstrap_iters=0) for lm in backends]
    ours, theirs = (r["results"] for r in runs)
    assert ours["compactlm_facts"]["acc,none"] == theirs["compactlm_facts"]["acc,none"]
    assert ours["compactlm_facts"]["acc_norm,none"] == theirs["compactlm_facts"]["acc_norm,none"]
    key = "exact_match,first-word"
    assert ours["compactlm_completion"][key] == theirs["compactlm_completion"][key]
    assert runs[0]["n-samples"]["compactlm_facts"]["effective"] == 70
    samples = [r["samples"]["compactlm_facts"] for r in runs]
    for sa, sb in zip(*samples):
        assert [x[0] for x in sa["filtered_resps"]] == pytest.approx([x[0] for x in sb["filtered_resps"]], abs=1e-4)
    generated = [[s["resps"] for s in r["samples"]["compactlm_completion"]] for r in runs]
    assert generated[0] == generated[1]


def test_shared_contexts_are_computed_once(backends):
    ours, _ = backends
    calls = []
    original = ours.model.hidden_states

    def counting(tokens, **kwargs):
        calls.append(tokens.shape)
        return original(tokens, **kwargs)

    ours.model.hidden_states = counting
    try:
        reqs = [("A question with four choices:", f" choice {k}") for k in range(4)]
        ours.loglikelihood(_requests(*reqs), disable_tqdm=True)
    finally:
        del ours.model.hidden_states
    assert len(calls) == 1 and calls[0][0] == 1  # one packed row holds the context and all four choices


def test_bits_per_byte_of_a_uniform_model_is_log2_vocab_over_bytes_per_token(bpe_tokenizer_file, tmp_path, sample_text):
    from compactlm.eval.harness import CompactLM
    from compactlm.eval.perplexity import text_perplexity

    tok = Tokenizer(bpe_tokenizer_file)
    model = build_model(random_config(vocab_size=tok.vocab_size, max_seq_len=64))
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: uniform over the vocabulary
    (tmp_path / "held_out.txt").write_text(sample_text[:3000])
    docs = ["Hello world.", "ünïcödé ✓"]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    lm = CompactLM(model=model, tokenizer=tok, batch_size=8, progress=False)
    result = text_perplexity(lm, [tmp_path / "held_out.txt", tmp_path / "docs.jsonl"], progress=False)
    for row in result["files"] + [result["total"]]:
        assert row["tokens"] > 0
        assert row["bits_per_byte"] == pytest.approx(math.log2(tok.vocab_size) / row["bytes_per_token"], rel=1e-6)
        assert row["perplexity"] == pytest.approx(tok.vocab_size, rel=1e-5)
    assert result["files"][0]["bytes"] == len(sample_text[:3000].encode())
    assert result["files"][1]["documents"] == 2


def test_text_command_writes_perplexity_and_bits_per_byte(bpe_exported, tmp_path, capsys, sample_text):
    (tmp_path / "a.txt").write_text(sample_text[:500])
    out = tmp_path / "out"
    assert main(["eval", "--checkpoint", str(bpe_exported[0]), "--text", str(tmp_path / "a.txt"), "--output", str(out),
                 "--no-progress"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["text"]["total"]["bits_per_byte"] > 0
    assert "bits per byte" in capsys.readouterr().out


def test_evolution_over_three_checkpoints_writes_table_and_plots_and_skips_cached_work(tiny_dataset, tmp_path,
                                                                                        capsys):
    from compactlm.eval import evolution, tasks
    from compactlm.train.metrics import read_metrics, validation_records
    from compactlm.train.trainer import train
    from tests.conftest import png_size

    run_dir = tmp_path / "run"
    train(tiny_train_config(tiny_dataset, run_dir, **{"train.max_steps": 15, "checkpoint_every": 5,
                                                       "keep_checkpoints": 3, "eval_every": 5}),
          console=lambda *a: None)
    checkpoints = evolution.run_checkpoints(run_dir)
    assert [c.name for c in checkpoints] == ["step-00000005", "step-00000010", "step-00000015"]

    args = ["eval", "--run", str(run_dir), "--tasks", "compactlm_facts,compactlm_completion", "--limit", "6",
            "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    eval_dir = run_dir / "eval"
    table = (eval_dir / "results-limit6.md").read_text()
    assert "| checkpoint | compactlm_facts | compactlm_completion | avg |" in table
    for step, tokens in ((5, "1.28k"), (10, "2.56k"), (15, "3.84k")):
        assert f"| step-{step:08d} ({tokens} tokens) |" in table
    summary = json.loads((eval_dir / "results-limit6.json").read_text())
    assert [c["tokens"] for c in summary["checkpoints"]] == [1280, 2560, 3840]
    assert all(c["results"]["compactlm_facts"]["metric"] == "acc_norm,none" for c in summary["checkpoints"])
    assert all(c["results"]["compactlm_facts"]["samples"] == 6 for c in summary["checkpoints"])
    assert sorted(p.name for p in (eval_dir / "plots").iterdir()) == [
        "average.png", "compactlm_completion.png", "compactlm_facts.png", "val_loss.png"]
    assert out.count("evaluating") == 3
    caches = sorted(eval_dir.glob("step-*.json"))
    assert len(caches) == 3
    mtimes = [p.stat().st_mtime_ns for p in caches]

    # Second call: nothing is recomputed, not even a model is loaded; loads are counted where
    # evolution looks load_lm up, and the counter is proven live by the third call below.
    loads = []
    original = evolution.load_lm
    evolution.load_lm = lambda *a, **k: loads.append(a) or original(*a, **k)
    try:
        specs = tasks.parse_tasks("compactlm_facts,compactlm_completion")
        summary = evolution.evaluate_run(run_dir, specs, limit=6, progress=False, console=lambda *a: None)
        assert loads == [] and summary["evaluated"] == []
        assert summary["cached"] == [c.name for c in checkpoints]
        assert [p.stat().st_mtime_ns for p in caches] == mtimes
        # The plots show exactly the results and the run's validation losses, at full figure size.
        for figure in summary["figures"]:
            assert png_size(figure.path) == (figure.width, figure.height) == (660, 396)  # 6 x 3.6 in, 110 dpi
        figures = {f.path.stem: f for f in summary["figures"]}
        tokens = [c["tokens"] for c in json.loads((eval_dir / "results-limit6.json").read_text())["checkpoints"]]
        for spec in specs:
            values = [100 * c["results"][spec.name]["value"] for c in json.loads(
                (eval_dir / "results-limit6.json").read_text())["checkpoints"]]
            assert figures[spec.name].line(spec.name) == (tokens, pytest.approx(values))
        val = validation_records(read_metrics(run_dir))
        assert figures["val_loss"].line("val_loss") == ([r["tokens"] for r in val], [r["val_loss"] for r in val])
        # A new task on the same checkpoints evaluates only that task.
        summary = evolution.evaluate_run(run_dir, tasks.parse_tasks("compactlm_facts:1"), limit=6, progress=False,
                                         console=lambda *a: None)
    finally:
        evolution.load_lm = original
    assert [t for _, t in summary["evaluated"]] == [["compactlm_facts"]] * 3
    assert len(loads) == 3


def test_bad_input_gives_one_error_line(bpe_exported, tmp_path, capsys):
    cases = [
        (["eval", "--checkpoint", str(tmp_path / "missing"), "--tasks", "local"], "missing: no such checkpoint"),
        (["eval", "--checkpoint", str(bpe_exported[0]), "--tasks", "compactlm_factz"], "unknown task: compactlm_factz"),
        (["eval", "--run", str(tmp_path), "--tasks", "local"], "no checkpoints"),
        (["eval", "--checkpoint", str(bpe_exported[0]), "--text", str(tmp_path / "nope.txt")], "no such text file"),
        (["eval", "--checkpoint", str(bpe_exported[0])], "nothing to do"),
        (["eval", "--checkpoint", str(bpe_exported[0]), "--tasks", "humaneval"], "--confirm-run-unsafe-code"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, (argv, err)


def test_suites_expand_to_the_reference_tasks():
    from compactlm.eval.tasks import parse_tasks

    assert [(t.name, t.num_fewshot) for t in parse_tasks("commonsense")] == [
        ("hellaswag", 0), ("openbookqa", 0), ("winogrande", 0), ("arc_challenge", 0), ("arc_easy", 0), ("boolq", 0),
        ("piqa", 0)]
    assert [(t.name, t.num_fewshot) for t in parse_tasks("problem-solving")] == [
        ("mmlu", 5), ("bbh_fewshot", 3), ("humaneval", 0), ("drop", 3)]
    assert [(t.name, t.num_fewshot) for t in parse_tasks("arc_easy:5, piqa")] == [("arc_easy", 5), ("piqa", None)]
    with pytest.raises(CompactlmError):
        parse_tasks("arc_easy:five")


def test_plain_lm_eval_command_finds_the_compactlm_model(bpe_exported, tmp_path):
    """`lm_eval --model compactlm` once the plugin's .pth is in a site directory (as --install-lm-eval-plugin does)."""
    from compactlm.eval.lm_eval_hook import install_pth

    site_dir = tmp_path / "site"
    site_dir.mkdir()
    install_pth(site_dir)
    code = ("import site, sys; site.addsitedir(sys.argv[1]); sys.argv = ['lm_eval'] + sys.argv[2:]; "
            "from lm_eval.__main__ import cli_evaluate; cli_evaluate()")
    out = subprocess.run(
        [sys.executable, "-c", code, str(site_dir), "--model", "compactlm", "--model_args",
         f"pretrained={bpe_exported[0]},progress=false", "--tasks", "compactlm_facts", "--include_path", str(TASKS),
         "--limit", "4", "--batch_size", "4"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "compactlm_facts" in out.stdout and "acc_norm" in out.stdout


def test_demo_evaluation_scores_the_local_task(bpe_exported):
    from compactlm.eval.tasks import demo_evaluation

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    entry = demo_evaluation(bpe_exported[0])
    assert entry["samples"] == 70 and entry["metric"] == "acc_norm,none"
    # The same scores as lm-eval's own hf backend on the exported model.
    reference = lm_eval.simple_evaluate(
        model=HFLM(pretrained=str(bpe_exported[1]), batch_size=8, device="cpu", dtype="float32"),
        tasks=["compactlm_facts"], task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
        verbosity="ERROR", bootstrap_iters=0)["results"]["compactlm_facts"]
    assert entry["acc"] == reference["acc,none"] and entry["value"] == reference["acc_norm,none"]
