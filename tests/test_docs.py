"""The docs match the code: the config keys page lists exactly the keys focal_rpn adds; the
results pages and the README's results tables are what the tool writes from the summaries."""
import os
import re
import shutil

import pytest
from conftest import ROOT


def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        out.update(_flat(v, f"{prefix}{k}.") if hasattr(v, "items") else {f"{prefix}{k}": v})
    return out


def test_config_page_lists_exactly_the_added_keys():
    from detectron2.config import get_cfg

    from focal_rpn.config import add_focal_rpn_config

    added = set(_flat(add_focal_rpn_config(get_cfg()))) - set(_flat(get_cfg()))
    with open(os.path.join(ROOT, "docs", "config.md")) as f:
        listed = re.findall(r"^\| `([A-Z0-9_.]+)` \|", f.read(), flags=re.M)
    assert len(listed) == len(set(listed))
    assert set(listed) == added


def _datasets_with_summaries():
    import glob

    from focal_rpn.study.suites import DATASETS

    return [d for d in DATASETS if glob.glob(os.path.join(ROOT, "results", d, "*", "*", "seed*.json"))]


def test_every_dataset_with_results_has_its_page_and_readme_block():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    for dataset in _datasets_with_summaries():
        assert os.path.isfile(os.path.join(ROOT, "docs", "results", f"{dataset}.md")), dataset
        assert f"<!-- results:{dataset}:begin -->" in readme, dataset


@pytest.mark.parametrize("dataset", _datasets_with_summaries())
def test_results_pages_are_what_the_tool_writes(dataset, tmp_path):
    """docs/results/<dataset>.md and the README's table rows rebuild from the committed summaries
    with one command and no options."""
    from focal_rpn.tools import results_page

    shutil.copytree(os.path.join(ROOT, "results"), tmp_path / "results")
    (tmp_path / "docs" / "results").mkdir(parents=True)
    page = os.path.join(ROOT, "docs", "results", f"{dataset}.md")
    if os.path.isfile(page):
        shutil.copy(page, tmp_path / "docs" / "results")
    shutil.copy(os.path.join(ROOT, "README.md"), tmp_path / "README.md")
    results_page.main(["--dataset", dataset, "--root", str(tmp_path)])
    if not os.path.isfile(page):
        pytest.skip(f"no committed docs/results/{dataset}.md yet")
    with open(page) as f:
        assert (tmp_path / "docs" / "results" / f"{dataset}.md").read_text() == f.read()
    with open(os.path.join(ROOT, "README.md")) as f:
        assert (tmp_path / "README.md").read_text() == f.read()


def test_an_error_while_building_a_page_leaves_it_as_it_was(tmp_path, monkeypatch):
    """The page's hand-written text survives a failing build: nothing is written until the
    generated block exists."""
    from focal_rpn.tools import results_page

    (tmp_path / "docs" / "results").mkdir(parents=True)
    page = tmp_path / "docs" / "results" / "trees.md"
    page.write_text("# Results on trees\n\nhand-written reading\n")
    (tmp_path / "README.md").write_text("readme\n")

    def broken(root, dataset):
        raise RuntimeError("a summary the page cannot read")

    monkeypatch.setattr(results_page, "page", broken)
    with pytest.raises(RuntimeError, match="cannot read"):
        results_page.main(["--dataset", "trees", "--root", str(tmp_path)])
    assert page.read_text() == "# Results on trees\n\nhand-written reading\n"


def test_a_sweeps_readme_line_is_its_slopes_and_its_page_shows_its_table(monkeypatch, tmp_path):
    """The README line of a sweep states FL − CE and FL − α-CE against log10 of the measured ratio
    (not each variant against the reference), and the page holds the sweep's table and figure."""
    from focal_rpn.study.suites import SWEEP_RATIOS, sweep_name
    from focal_rpn.study.summaries import Summaries
    from focal_rpn.tools import results_page

    runs = [{"variant": sweep_name(loss, r), "seed": seed,
             "metrics": {"bbox/AP": 50 + seed + (gain * (r or 1000) / 1000 if loss == "fl" else 0.0),
                         "retinanet/loss_neg_pos_ratio": float(r or 1000)}}
            for r in SWEEP_RATIOS for seed in range(3) for loss, gain in (("fl", 3.0), ("ce", 0), ("alpha_ce", 0))]
    root = str(tmp_path)
    monkeypatch.setattr(results_page, "suite_folders", lambda *_: [(os.path.join(root, "results"), "sweep")])
    monkeypatch.setattr(results_page, "read_suite", lambda *_: Summaries(runs, {}, []))
    (line,) = results_page.suite_lines(root, "deeppcb")
    assert line.startswith("- `sweep` on deeppcb, shipped configs") and "up to 3 seeds" in line
    assert "slope of FL − CE against log10(neg:pos): +" in line and "slope of FL − α-CE" in line
    assert "grows with the ratio" in line and "paired comparisons" not in line
    if os.path.isdir(os.path.join(ROOT, "results", "deeppcb", "sweep")):
        with open(os.path.join(ROOT, "docs", "results", "deeppcb.md")) as f:
            text = f.read()
        assert "#### Imbalance sweep: AP against the negatives per positive" in text
        assert "(../../results/deeppcb/sweep/sweep.png)" in text


def test_a_recipe_row_counts_its_float32_fallbacks_and_times_the_others(monkeypatch, tmp_path):
    """The README row of a bfloat16 recipe with seeds that fell back to float32 says how many did,
    and its training minutes are those of the bfloat16 runs (0.2 s/iter x 1500 = 5 min), not a
    mean with the fallback's machine (0.4 s/iter)."""
    from focal_rpn.study.summaries import Summaries
    from focal_rpn.tools import results_page

    amp = "MODEL:\n  DEVICE: cpu\nSOLVER:\n  AMP:\n    ENABLED: true\n"
    runs = [{"variant": "gamma_2", "seed": seed, "iterations": 1500, "config": amp,
             "precision": "float32" if seed >= 3 else "bfloat16", "s_per_iter": 0.4 if seed >= 3 else 0.2,
             "metrics": {"bbox/AP": 50.0 + seed, "bbox/AP50": 80.0}} for seed in range(5)]
    root = str(tmp_path)
    monkeypatch.setattr(results_page, "suite_folders", lambda *_: [(os.path.join(root, "results"), "retinanet")])
    monkeypatch.setattr(results_page, "read_suite", lambda *_: Summaries(runs, {}, []))
    (row,) = results_page.recipe_rows(root, "bccd")
    # AP 50-54: mean 52, SD 1.581, t(0.975, 4) = 2.776 -> ±1.96
    assert "| 5 (2 in float32) | 52.0 ± 2.0 | 80.0 ± 0.0 | - | 5.0 ± 0.0 |" in row
