"""The suite's one progress convention (``interp_core.progress.progress_bar``): True shows a bar, False hides it
without building one, None shows it on a terminal only."""

from tqdm.auto import tqdm

from interp_core.patching import patch_sweep
from interp_core.progress import progress_bar

from ..conftest import make_policy


def test_hidden_bar_iterates_and_ignores_updates_without_a_tqdm_object(capsys):
    bar = progress_bar(range(3), desc="hidden", progress=False)
    assert not isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]
    with progress_bar(total=5, desc="hidden", progress=False) as b:
        b.update(2)
        b.update()
        b.set_postfix(loss=1.0)
    assert b.n == 3  # counted as tqdm counts (rl.collect reads it)
    b.close()
    assert list(progress_bar(progress=False)) == []
    assert "hidden" not in capsys.readouterr().err


def test_shown_bar_writes_and_terminal_only_bar_stays_quiet_off_a_terminal(capsys):
    assert list(progress_bar(range(3), desc="shown bar", progress=True)) == [0, 1, 2]
    assert "shown bar" in capsys.readouterr().err
    assert list(progress_bar(range(3), desc="quiet bar", progress=None)) == [0, 1, 2]  # pytest's stderr: no tty
    assert "quiet bar" not in capsys.readouterr().err


def test_a_patching_sweep_shows_its_bar_only_when_asked(capsys):
    import torch

    policy = make_policy()
    x = torch.randn(2, 6)
    for progress, shown in ((True, True), (False, False)):
        patch_sweep(policy, x[:1], x[1:], ["0"], lambda out: out[:, 0], normalize=False, progress=progress)
        assert ("patching" in capsys.readouterr().err) == shown
