"""`nextlat-pt sweep`: the grid's expansion, the manifest, bad input, the report's
statistics, the Slurm array submission (a stand-in sbatch) and the array task's lookup."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest

from nextlat_pt.sweep.cli import sweep_main
from nextlat_pt.sweep.plan import DONE_MARKER, SweepError, expand, parse_grid, read_plan
from nextlat_pt.sweep.report import summarize
from nextlat_pt.sweep.runner import array_task, submit_array, train_command


def test_the_grid_times_the_seeds_gives_one_run_each_with_its_own_dir_and_seed(tmp_path):
    grid = parse_grid(["nextlat.horizon=1,2", "train.lr=1e-3,3e-3,1e-2"])
    plan = expand(None, ["train.max_steps=5"], grid, seeds=2, out=str(tmp_path),
                  base_seed=10, sweep_name="s")
    assert len(plan.runs) == 2 * 3 * 2
    assert len({r.dir for r in plan.runs}) == len(plan.runs)
    assert {r.seed for r in plan.runs} == {10, 11}
    first = plan.runs[0]
    assert first.point == {"nextlat.horizon": "1", "train.lr": "1e-3"}
    assert first.overrides == ["nextlat.horizon=1", "train.lr=1e-3", "run.seed=10",
                               "run.name=s-horizon=1_lr=1e-3_seed0"]
    assert Path(first.dir) == tmp_path / "horizon=1_lr=1e-3_seed0"
    command = train_command(plan, first, nproc_per_node=1)
    assert command[-6:] == ["train.max_steps=5", *first.overrides, f"run.dir={first.dir}"]
    assert "torch.distributed.run" in train_command(plan, first, nproc_per_node=2)


def test_values_with_commas_inside_brackets_stay_whole():
    grid = parse_grid(["data.train=[{path: a, weight: 1}],[{path: b, weight: 1}]"])
    assert grid["data.train"] == ["[{path: a, weight: 1}]", "[{path: b, weight: 1}]"]


@pytest.mark.parametrize("item, message", [
    ("lr=1,2", "is not section.key=v1,v2"),
    ("train.lr", "is not section.key=v1,v2"),
    ("train.lr=1,,2", "has an empty value"),
    ("run.seed=1,2", "use --seeds N"),
])
def test_bad_grid_items_get_one_line(item, message):
    with pytest.raises(SweepError, match=message):
        parse_grid([item])


def test_the_manifest_round_trips_and_a_different_sweep_in_the_same_dir_is_refused(
        tmp_path, capsys):
    args = ["--grid", "nextlat.horizon=1,2", "--out", str(tmp_path), "--dry-run",
            "train.max_steps=3"]
    assert sweep_main(args) == 0
    plan = read_plan(tmp_path)
    assert [r.point["nextlat.horizon"] for r in plan.runs] == ["1", "2"]
    assert sweep_main(args) == 0  # the same sweep again: fine (it resumes)
    assert sweep_main(["--grid", "nextlat.horizon=1,3", "--out", str(tmp_path),
                       "--dry-run"]) == 2
    assert "holds another sweep" in capsys.readouterr().err


def test_a_bad_run_config_stops_the_sweep_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert sweep_main(["--grid", "model.num_heads=4,3", "--out", str(out), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "run num_heads=3_seed0" in err and "num_heads=3" in err
    assert not out.exists()


def test_nothing_to_sweep_is_refused(capsys):
    assert sweep_main([]) == 2
    assert "nothing to sweep" in capsys.readouterr().err


def _log_metrics(run_dir: str, val_ce: float, ce: float) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    records = [{"step": 1, "loss": 9.0, "ce": 9.0}, {"step": 2, "loss": ce + 1, "ce": ce},
               {"step": 2, "val_ce": val_ce}]
    (Path(run_dir) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                         for r in records))


def test_the_report_averages_the_seeds_of_each_point(tmp_path, capsys):
    plan = expand(None, [], parse_grid(["nextlat.horizon=1,2"]), seeds=3, out=str(tmp_path),
                  base_seed=0, sweep_name="s")
    plan.write()
    vals = {"1": [5.0, 5.2, 5.4], "2": [4.0, 4.1, 4.5]}
    for run in plan.runs:
        if run.point["nextlat.horizon"] == "2" and run.seed == 2:
            continue  # a run that never started: left out of the mean, counted as missing
        _log_metrics(run.dir, vals[run.point["nextlat.horizon"]][run.seed], 6.0 + run.seed)
        (Path(run.dir) / DONE_MARKER).write_text("finished\n")
    rows = {r["point"]["nextlat.horizon"]: r for r in summarize(plan)}
    assert rows["1"]["val_ce"] == pytest.approx(5.2)
    assert rows["1"]["val_ce_std"] == pytest.approx(statistics.stdev(vals["1"]))
    assert rows["2"]["val_ce"] == pytest.approx(4.05) and rows["2"]["finished"] == 2
    assert rows["2"]["ce"] == pytest.approx(6.5)
    assert sweep_main(["--report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 3 / 3 | 5.2000 ± 0.2000 |" in out and "| 2 | 2 / 3 |" in out
    assert (tmp_path / "report.md").is_file() and (tmp_path / "loss_curves.png").is_file()
    assert json.loads((tmp_path / "report.json").read_text())["rows"][0]["val_ce_per_seed"]


def test_slurm_submits_one_array_of_the_unfinished_runs(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sbatch = bindir / "sbatch"
    sbatch.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$(dirname "$0")/args"\n'
                      'echo "$NEXTLAT_SWEEP $CONFIG" > "$(dirname "$0")/env"\n'
                      'echo "Submitted batch job 7"\n')
    sbatch.chmod(0o755)
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n")
    plan = expand("configs/125m.yaml", [], parse_grid(["train.lr=1e-3,2e-3,3e-3"]), seeds=1,
                  out=str(tmp_path / "sw"), base_seed=0, sweep_name="s")
    manifest = plan.write()
    Path(plan.runs[1].dir).mkdir(parents=True)
    (Path(plan.runs[1].dir) / DONE_MARKER).write_text("finished\n")
    submitted = submit_array(plan, manifest, str(script), sbatch=str(sbatch), max_parallel=2)
    assert submitted == [0, 2]
    args = (bindir / "args").read_text().split()
    assert args == ["--array=0,2%2", "--export=ALL", str(script)]
    sweep_file, config = (bindir / "env").read_text().split()
    assert sweep_file == str(manifest.resolve()) and config.endswith("configs/125m.yaml")
    with pytest.raises(SweepError, match="does not exist"):
        submit_array(plan, manifest, str(tmp_path / "missing.sh"), sbatch=str(sbatch))


def test_an_array_task_reads_its_run_dir_and_overrides(tmp_path):
    plan = expand(None, ["train.max_steps=9"], parse_grid(["train.lr=1e-3,2e-3"]), seeds=1,
                  out=str(tmp_path), base_seed=5, sweep_name="s")
    manifest = plan.write()
    lines = array_task(str(manifest), 1)
    assert lines[0] == plan.runs[1].dir
    assert lines[1:] == ["train.max_steps=9", "train.lr=2e-3", "run.seed=5",
                         "run.name=s-lr=2e-3_seed0"]
    with pytest.raises(SweepError, match="outside the sweep's 2 runs"):
        array_task(str(manifest), 2)


def test_no_manifest_is_one_line(tmp_path, capsys):
    assert sweep_main(["--report", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
