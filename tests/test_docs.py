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
