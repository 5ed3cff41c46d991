"""Attack loops draw a progress bar only where the caller asked for one (``privsim run`` of a leakage
experiment); everywhere else ``steps`` is a silent ``range``."""

from attacks.progress import shown, steps


def test_steps_is_a_silent_range_by_default(capsys):
    assert list(steps(5, "loop")) == [0, 1, 2, 3, 4]
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_shown_draws_the_named_bar_on_stderr_with_the_count(capsys):
    with shown():
        assert list(steps(7, "inverting_gradients (2 restarts)")) == list(range(7))
    out = capsys.readouterr()
    assert out.out == ""
    assert "inverting_gradients (2 restarts)" in out.err and "7/7" in out.err
    assert list(steps(3, "after the block")) == [0, 1, 2]  # the setting ends with the block
    assert "after the block" not in capsys.readouterr().err


def test_shown_false_and_an_early_break_leave_nothing_behind(capsys):
    with shown(False):
        assert list(steps(4, "off")) == [0, 1, 2, 3]
    assert capsys.readouterr().err == ""
    with shown():
        for i in steps(10, "stopped early"):
            if i == 2:
                break
    assert "stopped early" in capsys.readouterr().err


def test_a_leakage_run_with_progress_shows_the_attack_loop(capsys, tmp_path):
    from simulator.runner import run
    from simulator.scenario import load_scenario

    s = load_scenario(
        "scenarios/leakage_ig.toml",
        ["attacks.inversion.params.iterations=5", "attacks.inversion.params.restarts=1"],
    )
    run(s, out_dir=tmp_path / "o", store=tmp_path / "r.sqlite", progress=True)
    assert "inverting_gradients (1 restart)" in capsys.readouterr().err
    run(s, out_dir=tmp_path / "q", store=tmp_path / "r.sqlite", progress=False)
    assert "inverting_gradients" not in capsys.readouterr().err
