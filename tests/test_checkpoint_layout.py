"""compactlm.checkpoint.layout: the one rule for which checkpoints of a run exist."""

import pytest

from compactlm.checkpoint import layout


def test_only_complete_step_directories_count_in_step_order(tmp_path):
    run = tmp_path / "run"
    for step in (20, 5, 100):
        directory = layout.checkpoint_dir(run, step)
        directory.mkdir(parents=True)
        (directory / layout.STATE_FILE).write_bytes(b"")
    (run / "checkpoints" / "step-00000200").mkdir()  # no train_state.pt: a damaged or foreign directory
    (run / "checkpoints" / ".step-00000300.tmp").mkdir()  # a write killed before its rename
    (run / "checkpoints" / ".step-00000300.tmp" / layout.STATE_FILE).write_bytes(b"")
    (run / "checkpoints" / "step-7").mkdir()  # not the naming scheme
    found = layout.complete_checkpoints(run)
    assert [p.name for p in found] == ["step-00000005", "step-00000020", "step-00000100"]
    assert layout.latest_checkpoint(run) == found[-1] and layout.step_of(found[-1]) == 100
    layout.remove_leftovers(run)
    assert not (run / "checkpoints" / ".step-00000300.tmp").exists()
    assert (run / "checkpoints" / "step-00000200").exists()  # only temporaries are removed
    assert layout.latest_checkpoint(tmp_path / "nothing-here") is None


def test_step_of_refuses_other_names(tmp_path):
    with pytest.raises(ValueError, match="not a step-XXXXXXXX"):
        layout.step_of(tmp_path / "final")
    assert layout.temporary_dir(layout.checkpoint_dir(tmp_path, 3)).name == ".step-00000003.tmp"


def test_outputs_get_the_usual_permissions_not_private_ones(tmp_path):
    """Exports and checkpoints are read by other users and containers: umask 022 gives 755 / 644."""
    import os
    import stat

    from compactlm.checkpoint.model import build_model, save_checkpoint
    from compactlm.convert.hf import save_hf
    from tests.conftest import random_config

    old = os.umask(0o022)
    try:
        model = build_model(random_config())
        for directory in (save_checkpoint(model, tmp_path / "ckpt"), save_hf(model, tmp_path / "hf")):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o755
            files = list(directory.iterdir())
            assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in files)
    finally:
        os.umask(old)
