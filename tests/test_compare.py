"""`python -m focal_rpn.tools.compare`: paired seeds across arbitrary folders of run summaries, checked
on hand-made numbers (t quantiles from statistical tables), and its refusals of bad folders."""
import json

import pytest

from focal_rpn.tools import compare
def _write(folder, seed, ap50, variant="gamma_2", iterations=650):
    folder.mkdir(parents=True, exist_ok=True)
    summary = {"variant": variant, "seed": seed, "iterations": iterations, "s_per_iter": 0.5,
               "peak_rss_mb": 1000.0, "config_sha256": f"sha{seed}", "git_commit": "abc",
               "metrics": {"bbox/AP": ap50 / 4, "bbox/AP50": ap50, "bbox/AP75": 1.0}}
    (folder / f"seed{seed}.json").write_text(json.dumps(summary))


def test_paired_difference_over_the_common_seeds(tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for seed, (x, y, z) in enumerate([(10, 11, 15), (20, 22, 25.1), (30, 33, 34.9)]):
        _write(a, seed, x), _write(b, seed, y), _write(c, seed, z)
    _write(b, 3, 99.0)  # no partner in a: in b's mean, not in the pairs
    out = tmp_path / "cmp.md"
    assert compare.main([str(a), str(b), str(c), "--names", "ref", "tweak", "other", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.read_text() == text
    # b - a = 1, 2, 3: mean 2, std 1, t(0.975, 2) = 4.3027 -> half-width 4.3027 / sqrt(3) = 2.484
    assert "| tweak | 3 | 0.50 ± 0.62 | not resolved | 2.00 ± 2.48 | not resolved |" in text
    # c - a = 5, 5.1, 4.9: mean 5, std 0.1 -> half-width 0.248: resolved
    assert "| other | 3 | 1.25 ± 0.06 | better | 5.00 ± 0.25 | better |" in text
    # b's own mean is over its 4 seeds: (11 + 22 + 33 + 99) / 4 = 41.25
    assert "| tweak | 4 | " in text and " 41.25 ± " in text


AMP_CPU = "MODEL:\n  DEVICE: cpu\nSOLVER:\n  AMP:\n    ENABLED: true\n"


@pytest.mark.parametrize("fields,note", [
    ({}, None),  # no config recorded (the oldest summaries): float32, as asked
    ({"config": AMP_CPU}, None),  # before runs recorded a machine: bfloat16, as asked
    ({"config": AMP_CPU, "machine": {"bfloat16_units": True}}, None),
    ({"config": AMP_CPU, "precision": "bfloat16"}, None),
    ({"config": AMP_CPU, "precision": "float32"}, "`fallback` seeds 0, 1 trained in float32 where the config asks for bfloat16"),
    ({"config": AMP_CPU, "machine": {"bfloat16_units": False}},
     "`fallback` seeds 0, 1 recorded no precision where the config asks for bfloat16"),
])
def test_runs_trained_in_another_precision_are_named(tmp_path, capsys, fields, note):
    """A bfloat16 config's runs that trained in float32 (FOCAL_RPN_CPU_BF16=auto on a CPU without
    bfloat16 units) are named under the table, never mixed in silently."""
    a, b = tmp_path / "a", tmp_path / "b"
    for seed in (0, 1):
        _write(a, seed, 10.0 + seed), _write(b, seed, 11.0 + seed)
        path = b / f"seed{seed}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    assert compare.main([str(a), str(b), "--names", "ref", "fallback"]) == 0
    text = capsys.readouterr().out
    if note is None:
        assert "Precision:" not in text
    else:
        assert f"Precision: {note} (SOLVER.AMP.ENABLED on a CPU without bfloat16 units" in text


def test_speed_columns_average_the_runs_in_the_asked_precision(tmp_path, capsys):
    """A variant with bfloat16 seeds (0.2 s/iter, 1000 MB) and float32 fallback seeds (0.4, 1500 MB:
    another machine) reports the step time and memory of its bfloat16 runs, not a mean of both."""
    a, b = tmp_path / "a", tmp_path / "b"
    for seed in range(4):
        fell_back = seed >= 2
        for folder, ap50 in ((a, 10.0 + seed), (b, 11.0 + seed)):
            _write(folder, seed, ap50)
            path = folder / f"seed{seed}.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "config": AMP_CPU,
                                        "precision": "float32" if fell_back else "bfloat16",
                                        "s_per_iter": 0.4 if fell_back else 0.2,
                                        "peak_rss_mb": 1500.0 if fell_back else 1000.0}))
    assert compare.main([str(a), str(b), "--names", "ref", "mixed"]) == 0
    text = capsys.readouterr().out
    # AP50 10-13: mean 11.5, SD 1.291, t(0.975, 3) = 3.1824 -> ±2.05 (AP a quarter: ±0.51); the speed
    # cells over seeds 0-1 only, which agree
    assert "| ref | 4 | 2.88 ± 0.51 | 11.50 ± 2.05 | 1.00 ± 0.00 | 0.20 ± 0.00 | 1000 ± 0 |" in text
    assert "`mixed` seeds 2, 3 trained in float32 where the config asks for bfloat16" in text


def test_pairs_of_two_precisions_are_named(tmp_path, capsys):
    """A seed whose reference run trained in bfloat16 and whose other run fell back to float32 is
    named as a pair of two precisions; seeds trained alike are not."""
    a, b = tmp_path / "a", tmp_path / "b"
    for seed in range(3):
        for folder, fell_back, ap50 in ((a, seed == 2, 10.0 + seed), (b, seed >= 1, 11.0 + seed)):
            _write(folder, seed, ap50)
            path = folder / f"seed{seed}.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "config": AMP_CPU,
                                        "precision": "float32" if fell_back else "bfloat16"}))
    assert compare.main([str(a), str(b), "--names", "ref", "other"]) == 0
    text = capsys.readouterr().out
    assert "Pairs of two precisions (the difference holds the precision's effect too): " \
           "`other` seed 1 (float32 against bfloat16)." in text


def test_a_run_held_by_two_folders_leaves_both(tmp_path, capsys):
    """A summary copied into a second folder (by hand, or the study's same_run_as) would pair with
    itself (a difference of exactly 0): it is left out of both folders and named."""
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    for seed, (x, y) in enumerate([(10, 11), (20, 22), (30, 33)]):
        _write(a, seed, x), _write(b, seed, y)
    shutil.copy(a / "seed2.json", b / "seed2.json")  # b's seed 2 is a's run
    assert compare.main([str(a), str(b), "--names", "ref", "copy"]) == 0
    text = capsys.readouterr().out
    assert "left out of all of them (it would pair with itself): seed 2 (`ref`, `copy`)." in text
    # ref: seeds 0-1 (AP50 10, 20: mean 15, SD 7.07, t(0.975, 1) = 12.706 -> ±63.53); copy - ref = 1, 2:
    # mean 1.5, SD 0.707 -> ±6.35 (with the copy as a third pair: 1, 2, 0 -> 1.00 ± 2.48)
    assert "| ref | 2 | 3.75 ± 15.88 | 15.00 ± 63.53 |" in text
    assert "| copy | 2 | 0.38 ± 1.59 | not resolved | 1.50 ± 6.35 | not resolved |" in text


def test_bad_folders_are_refused_with_their_names(tmp_path):
    good = tmp_path / "good"
    _write(good, 0, 10.0), _write(good, 1, 12.0)
    with pytest.raises(ValueError, match="empty: no seed<K>.json"):
        (tmp_path / "empty").mkdir()
        compare.compare([str(good), str(tmp_path / "empty")])
    mixed = tmp_path / "mixed"
    _write(mixed, 0, 10.0), _write(mixed, 1, 12.0, variant="ce")
    with pytest.raises(ValueError, match=r"mixed: its summaries differ in variant \(ce: seed1.json; gamma_2: seed0.json\)"):
        compare.compare([str(good), str(mixed)])
    short = tmp_path / "short"
    _write(short, 0, 10.0), _write(short, 1, 12.0, iterations=325)
    with pytest.raises(ValueError, match="differ in iterations"):
        compare.compare([str(good), str(short)])
    with pytest.raises(ValueError, match="at least two folders"):
        compare.compare([str(good)])
    with pytest.raises(ValueError, match="one distinct name per folder"):
        compare.compare([str(good), str(good)], names=["x", "x"])
    with pytest.raises(ValueError, match="missing: not a folder"):
        compare.compare([str(good), str(tmp_path / "missing")])
    (good / "seed2.json").write_text("{}")
    with pytest.raises(ValueError, match="seed2.json is not a run summary"):
        compare.compare([str(good), str(mixed)])


def test_the_cli_reports_a_bad_folder_as_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare.main([str(tmp_path), str(tmp_path / "nope")])
    assert "no seed<K>.json run summaries" in capsys.readouterr().err


def test_output_records_the_command_that_rebuilds_it(tmp_path, capsys, monkeypatch):
    """--output ends the file with its command; --rebuild writes it again from today's summaries
    (here after a third seed arrives) and says which files changed; a file without the line is named."""
    monkeypatch.chdir(tmp_path)
    for seed, (x, y) in enumerate([(10, 11), (20, 22)]):
        _write(tmp_path / "a", seed, x), _write(tmp_path / "b b", seed, y)
    assert compare.main(["a", "b b", "--names", "ref", "tweak", "--output", "out.md"]) == 0
    text = (tmp_path / "out.md").read_text()
    assert text.endswith("\nWritten from the summaries by `python -m focal_rpn.tools.compare a 'b b' --names ref tweak "
                         "--output out.md`.\n")
    assert "| tweak | 2 | " in text
    capsys.readouterr()
    assert compare.main(["--rebuild", "out.md"]) == 0
    assert capsys.readouterr().out == "out.md: unchanged\n"
    _write(tmp_path / "a", 2, 30), _write(tmp_path / "b b", 2, 33)
    assert compare.main(["--rebuild", "out.md"]) == 0
    assert capsys.readouterr().out == "out.md: rewritten\n"
    rebuilt = (tmp_path / "out.md").read_text()
    # tweak - ref = 1, 2, 3 (as in the first test): 2.00 ± 2.48
    assert "| tweak | 3 | 0.50 ± 0.62 | not resolved | 2.00 ± 2.48 | not resolved |" in rebuilt
    assert rebuilt.endswith(text.split("\n")[-2] + "\n")
    (tmp_path / "hand.md").write_text("| a table pasted by hand |\n")
    with pytest.raises(SystemExit):
        compare.main(["--rebuild", "hand.md"])
    assert "hand.md: its last line names no `python -m focal_rpn.tools.compare ... --output` command" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a path that is not there (an unmatched shell glob): one line, no traceback
        compare.main(["--rebuild", "results/*/compare_*.md"])
    err = capsys.readouterr().err
    assert "No such file or directory: 'results/*/compare_*.md'" in err and "Traceback" not in err


def test_every_committed_comparison_is_what_its_command_writes(monkeypatch):
    """Each compare file under results/ rebuilds, from the committed summaries, to itself."""
    import glob
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.chdir(root)
    files = sorted(glob.glob("results/**/compare_*.md", recursive=True))
    assert len(files) >= 13
    for path in files:
        args = compare.recorded_args(path)
        assert compare.written_text(args) == open(path).read(), f"{path} is not what its command writes today"
