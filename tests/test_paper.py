"""`clbench paper`: every experiment at a tiny size, its files, and the report regenerated
from the JSON records alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agents.tnen.paper import EXPERIMENTS, experiment_module
from agents.tnen.paper.common import (
    PRESET_NAMES,
    SCHEMA,
    load_record,
    load_records,
    spearman,
    summary,
)
from clbench.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Every experiment run once at the tiny size into one folder, as `clbench paper all`."""
    out = tmp_path_factory.mktemp("paper")
    assert main(["paper", "all", "--size", "tiny", "--seeds", "0", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_experiment_writes_its_record_section_and_plots(folder, name):
    record = load_record(folder / f"{name}-seed0.json")
    assert record["schema"] == SCHEMA and record["experiment"] == name
    assert record["size"] == "tiny" and record["settings"]
    assert all(preset in record["figures"] for preset in PRESET_NAMES)
    section = (folder / f"{name}.md").read_text()
    assert section.startswith(f"## {experiment_module(name).TITLE}")
    images = [line.split("](")[1].rstrip(")") for line in section.splitlines()
              if line.startswith("![")]
    assert images, f"{name}.md links no plot"
    for image in images:
        data = (folder / image).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, image


def test_readme_sets_every_experiment_beside_the_paper(folder):
    readme = (folder / "README.md").read_text()
    assert "Not run yet" not in readme
    for name in EXPERIMENTS:
        assert f"## {experiment_module(name).TITLE}" in readme
        assert f"[{name}.md]({name}.md)" in readme
    assert readme.count("| the paper says | rule | we measured | verdict |") == len(EXPERIMENTS)
    overview = readme.split("## Overview")[1].split("\n## ")[0]
    assert all(experiment_module(name).TITLE in overview for name in EXPERIMENTS)


def test_report_regenerates_the_same_text_from_the_json_alone(folder, tmp_path):
    for name in EXPERIMENTS:
        shutil.copy(folder / f"{name}-seed0.json", tmp_path)
    assert main(["paper", "report", "--out", str(tmp_path)]) == 0
    for text in ["README.md", *(f"{name}.md" for name in EXPERIMENTS)]:
        assert (tmp_path / text).read_text() == (folder / text).read_text(), text
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        p.name for p in folder.glob("*.png"))


def test_figures_are_consistent(folder):
    robustness = load_record(folder / "robustness-seed0.json")["figures"]
    for preset in PRESET_NAMES:
        curve = robustness[preset]
        clean = curve["levels"][0]
        assert clean["std"] == 0 and clean["accuracy"]["mean"] == curve["original_accuracy"]
        assert curve["levels"][-1]["mse"]["mean"] > 0 == clean["mse"]["mean"]

    batch = load_record(folder / "batch-seed0.json")["figures"]
    for preset in PRESET_NAMES:
        for count, run in batch[preset]["runs"].items():
            assert run["n_skills"] == int(count) == len(run["original_accuracy"])
            iterations = [check["iteration"] for check in run["history"]]
            assert iterations == sorted(iterations) and iterations[0] == 0
            assert all(check["flops"] == check["iteration"] * run["flops_per_iteration"]
                       for check in run["history"])
            assert iterations[-1] == run["iterations"]  # the last check is what is stored

    split = load_record(folder / "split-seed0.json")["figures"]
    for preset in PRESET_NAMES:
        whole, chunks = split[preset]["whole"], split[preset]["chunks"]
        assert whole["n_chunks"] == whole["n_skills"]  # one row per network
        assert chunks["n_chunks"] > chunks["n_skills"]
        assert whole["tn_parameters"] == chunks["tn_parameters"]
    assert split["paper"]["chunks"]["n_chunks"] == 3 * split["paper"]["chunks"]["n_skills"]

    continual = load_record(folder / "continual-seed0.json")
    mixed_record = load_record(folder / "mixed-seed0.json")
    mixed, mixed_settings = mixed_record["figures"], mixed_record["settings"]
    for preset in PRESET_NAMES:
        result = continual["figures"][preset]["result"]
        assert len(result["accuracy"]) == continual["settings"]["env_kwargs"][preset]["n_tasks"]
        assert result["status"] == "complete"
        assert len(result["tn_test_accuracy"]) == len(result["n_test"]) == len(result["accuracy"])
        sizes = [m["tn_parameters"] for m in mixed[preset]["result"]["agent_metrics"]]
        m = mixed_settings["mnist_networks"][preset]
        assert sizes == [21432] * m + [61388]


def test_paper_command_rejects_bad_requests(tmp_path, capsys):
    assert main(["paper", "batch", "--full", "--size", "tiny", "--out", str(tmp_path)]) == 2
    assert "--full and --size tiny disagree" in capsys.readouterr().err
    (tmp_path / "batch-seed0.json").write_text(json.dumps({"schema": "something else"}))
    assert main(["paper", "report", "--out", str(tmp_path)]) == 2
    assert "not a clbench paper record" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["paper", "robustnes"])
    with pytest.raises(ValueError, match="choose one of robustness"):
        experiment_module("robustnes")


@pytest.mark.parametrize("figures", [{}, [], {"paper": {}, "default": {"runs": {}}}])
def test_report_on_a_record_without_figures_is_one_clear_line(tmp_path, capsys, figures):
    record = {"schema": SCHEMA, "experiment": "batch", "size": "tiny", "settings": {},
              "figures": figures}
    (tmp_path / "batch-seed0.json").write_text(json.dumps(record))
    assert main(["paper", "report", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "batch-seed0.json: field 'figures'" in err, err
    assert "rerun `clbench paper batch`" in err


def test_statistics_against_hand_computed_values():
    assert summary([1.0, 3.0]) == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [5, 5, 5]) != spearman([1, 2, 3], [5, 5, 5])  # NaN: no ranks
    # ties share their mean rank: ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)


def test_full_size_without_the_full_data_says_what_is_missing(dead_network, fresh_data_cache,
                                                               tmp_path, capsys):
    code = main(["paper", "robustness", "--full", "--data-root", str(tmp_path / "empty"),
                 "--out", str(tmp_path)])
    assert code == 2
    assert "dataset 'mnist' was not found" in capsys.readouterr().err
    assert not (tmp_path / "robustness-seed0.json").exists()


def test_report_judges_every_seed(folder, tmp_path):
    """A second seed's record joins the first: sections and verdicts name both seeds, and a
    seed run with other settings is refused."""
    record = load_record(folder / "batch-seed0.json")
    (tmp_path / "batch-seed0.json").write_text(json.dumps(record))
    (tmp_path / "batch-seed1.json").write_text(json.dumps({**record, "seed": 1}))
    assert [r["seed"] for r in load_records(tmp_path, "batch")] == [0, 1]
    assert main(["paper", "report", "--out", str(tmp_path)]) == 0
    assert "seeds 0, 1" in (tmp_path / "batch.md").read_text()
    other = {**record, "seed": 2, "settings": {**record["settings"], "max_train": 1}}
    (tmp_path / "batch-seed2.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="differ in 'settings'"):
        load_records(tmp_path, "batch")


def test_seeds_option_is_checked(capsys):
    for bad in ("0,x", "1,1", ""):
        with pytest.raises(SystemExit):
            main(["paper", "batch", "--seeds", bad])
        assert "--seeds" in capsys.readouterr().err


def test_committed_report_is_what_report_writes(tmp_path):
    """leaderboard/paper/ is what `clbench paper report` writes from its committed records, so
    a change of a preset's description (read from today's code) that the records did not run
    under fails here until the experiments are run again."""
    committed = Path(__file__).resolve().parents[1] / "leaderboard" / "paper"
    for record in committed.glob("*-seed*.json"):
        shutil.copy(record, tmp_path)
    assert main(["paper", "report", "--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".md", ".png"))
    assert written == sorted(p.name for p in committed.iterdir() if p.suffix in (".md", ".png"))
    for name in written:
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), \
            f"leaderboard/paper/{name} is stale: rerun the experiments or `clbench paper report`"
