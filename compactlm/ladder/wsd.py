"""WSD ladders (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
Durations"): one warm-up-stable-decay run per size, every shorter budget a cooldown branch of its stable
phase; and the cosine runs that measure what the WSD schedule costs or gains at equal budget."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from compactlm.checkpoint import layout
from compactlm.config.train import OptimSection
from compactlm.ladder.point import Point

COSINE_PREFIX = "cosine-"


def branch_wsd(points: list[Point]) -> None:
    """Per size, the longest point is one WSD run; every shorter one becomes a cooldown branch of it
    (Hägele et al. 2024): it starts from that run's checkpoint at its own decay start and trains only its
    decay, which is step for step what a WSD run of its length would train. All of a size's points share
    the warm-up (of the shortest point's length) and, until they decay, the learning rate."""
    from compactlm.train.optim import wsd_decay_start  # imports torch: not at the light CLI's start

    by_size: dict[str, list[Point]] = {}
    for p in points:
        by_size.setdefault(p.size, []).append(p)
    for group in by_size.values():
        group.sort(key=lambda p: p.steps)
        trunk = group[-1]
        warmup = group[0].train_config["optim"]["warmup_steps"]
        for p in group:
            p.train_config["optim"].update(schedule="wsd", warmup_steps=warmup)
        trunk_dir = Path(trunk.train_config["run_dir"])
        for p in group[:-1]:
            start = wsd_decay_start(OptimSection(**p.train_config["optim"]), p.steps)
            if start >= p.steps or start < 1:
                continue  # no stable phase to branch from: trained whole
            p.depends_on, p.branch_step = trunk.name, start
            p.train_config["train"]["init_from"] = str(layout.checkpoint_dir(trunk_dir, start))
            trunk.train_config["checkpoint_steps"] = sorted({*trunk.train_config.get("checkpoint_steps", []), start})


def trunks(points: list[Point]) -> dict[str, Point]:
    """Each size's longest point: its WSD run, which the size's other points branch from."""
    longest: dict[str, Point] = {}
    for p in points:
        if p.depends_on is None and (p.size not in longest or p.steps > longest[p.size].steps):
            longest[p.size] = p
    return longest


def cosine_baselines(points: list[Point], sizes: list[str], out_dir: str) -> list[Point]:
    """For each named size, its WSD run again with the cosine schedule: same steps, warm-up, peak and final
    learning rate, data and seed, so the two differ only in the shape of the decay."""
    baselines = []
    for size, trunk in trunks(points).items():
        if size not in sizes:
            continue
        config = copy.deepcopy(trunk.train_config)
        config["optim"]["schedule"] = "cosine"
        config["checkpoint_steps"] = []
        config["run_dir"] = str(Path(out_dir) / "points" / (COSINE_PREFIX + trunk.name))
        baselines.append(dataclasses.replace(trunk, name=COSINE_PREFIX + trunk.name, train_config=config))
    return baselines


def wsd_vs_cosine(baselines: list[Point], results: dict[str, dict]) -> list[dict]:
    """Finished pairs: {size, N, D, steps, wsd, cosine, gap (wsd / cosine - 1)}."""
    pairs = []
    for b in baselines:
        wsd, cosine = results.get(b.name[len(COSINE_PREFIX):]), results.get(b.name)
        if wsd is not None and cosine is not None:
            pairs.append({"size": b.size, "N": b.n_params, "D": b.tokens, "steps": b.steps,
                          "wsd": wsd["val_loss"], "cosine": cosine["val_loss"],
                          "gap": wsd["val_loss"] / cosine["val_loss"] - 1})
    return pairs


def trained_flops(point: Point) -> float:
    """What training the point costs: all its steps, or a branch's steps after its branch point."""
    return point.flops("model") * (point.steps - (point.branch_step or 0)) / point.steps
