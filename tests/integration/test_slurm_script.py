"""slurm/pretrain_*.sh outside a job: the inputs are checked (config, data, save directory,
overrides, the config against the job's world size) before anything is submitted, each mistake
in one line with exit code 2; with good inputs the script submits itself with
`sbatch --nodes=$NODES`. A stand-in `sbatch` records the call, so no cluster is needed
(tests/integration/test_slurm.py runs the real thing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["pretrain_1b.sh", "pretrain_350m.sh", "pretrain_125m.sh"]


@pytest.fixture
def fake_sbatch(tmp_path) -> Path:
    """A directory with an `sbatch` that writes its arguments (one per line) to sbatch.args."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "sbatch"
    script.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$(dirname "$0")/sbatch.args"\n'
                      'env > "$(dirname "$0")/sbatch.env"\necho "Submitted batch job 42"\n')
    script.chmod(0o755)
    return bindir


def _run(env_extra: dict[str, str], args: list[str] = (), script: str = "pretrain_1b.sh",
         bindir: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_")) and k not in (
               "CONFIG", "DATA", "SAVE_DIR", "NODES", "EXTRA_ARGS", "NEXTLAT_ROOT",
               "NPROC_PER_NODE", "PYTHON")}
    env["PYTHON"] = sys.executable
    path = env.get("PATH", "/usr/bin:/bin")
    env["PATH"] = f"{bindir}:{path}" if bindir else path
    env.update(env_extra)
    return subprocess.run(["bash", str(ROOT / "slurm" / script), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _dataset(tmp_path: Path, name: str) -> Path:
    """Something that looks like a `prepare-data` output (the script checks for index.json)."""
    path = tmp_path / name / "train"
    path.mkdir(parents=True)
    (path / "index.json").write_text("{}")
    return tmp_path / name


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_share_the_launcher(script):
    text = (ROOT / "slurm" / script).read_text()
    subprocess.run(["bash", "-n", str(ROOT / "slurm" / script)], check=True)
    for line in ("#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --signal=B:USR1@", "#SBATCH --requeue", "#SBATCH --open-mode=append"):
        assert line in text, f"{script}: {line}"
    assert 'source "$NEXTLAT_ROOT/slurm/launch.sh"' in text
    for helper in ("launch.sh", "torchrun_node.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "slurm" / helper)], check=True)


@pytest.mark.parametrize("case", [
    "no_data", "no_save_dir", "no_config_file", "relative_config_missing",
    "unknown_config_name", "data_not_prepared", "data_missing", "save_parent_missing",
    "bad_key", "not_key_value", "sbatch_option", "run_dir_override",
    "world_does_not_divide_batch"])
def test_bad_inputs_stop_before_submission(case, tmp_path, fake_sbatch):
    good = {"DATA": "builtin", "SAVE_DIR": str(tmp_path / "run")}
    env, args, expect = dict(good), [], ""
    if case == "no_data":
        env.pop("DATA")
        expect = "DATA is not set"
    elif case == "no_save_dir":
        env.pop("SAVE_DIR")
        expect = "SAVE_DIR is not set"
    elif case == "no_config_file":
        env["CONFIG"] = str(tmp_path / "missing.yaml")
        expect = f"config file {tmp_path / 'missing.yaml'} does not exist"
    elif case == "relative_config_missing":
        env["CONFIG"] = "configs/13b.yaml"
        expect = "config file configs/13b.yaml does not exist (looked in"
    elif case == "unknown_config_name":
        env["CONFIG"] = "13b"
        expect = "config '13b' is neither a YAML file nor a name in"
    elif case == "data_not_prepared":
        (tmp_path / "raw").mkdir()
        env["DATA"] = f"{tmp_path / 'raw'}:0.5"
        expect = f"{tmp_path / 'raw'} is not a prepared dataset"
    elif case == "data_missing":
        env["DATA"] = f"{_dataset(tmp_path, 'web')}:0.8,{tmp_path / 'code'}:0.2"
        expect = f"dataset directory {tmp_path / 'code'} does not exist"
    elif case == "save_parent_missing":
        env["SAVE_DIR"] = str(tmp_path / "nowhere" / "run")
        expect = f"the parent directory {tmp_path / 'nowhere'} does not exist"
    elif case == "bad_key":
        args = ["train.max_step=10"]
        expect = "unknown config key 'train.max_step'; did you mean 'train.max_steps'?"
    elif case == "not_key_value":
        args = ["train.lr"]
        expect = "argument 'train.lr' is not a key=value override"
    elif case == "sbatch_option":
        args = ["--nodes=2"]
        expect = "argument '--nodes=2' looks like an sbatch option"
    elif case == "run_dir_override":
        args = [f"run.dir={tmp_path}"]
        expect = "set SAVE_DIR instead"
    elif case == "world_does_not_divide_batch":
        env["NODES"] = "3"  # 24 ranks: 512 is not a multiple of 8 × 24
        expect = "not divisible by train.micro_batch_size=8 × data-parallel size 24"
    proc = _run(env, args, bindir=fake_sbatch)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expect in proc.stderr, proc.stderr
    assert not (fake_sbatch / "sbatch.args").exists(), "nothing may be submitted"


def test_good_inputs_submit_the_script_with_nodes_and_overrides(tmp_path, fake_sbatch):
    web, code = _dataset(tmp_path, "web"), _dataset(tmp_path, "code")
    workdir = tmp_path / "somewhere"
    (workdir / "runs").mkdir(parents=True)
    proc = _run({"DATA": f"{web}:0.8,{code}:0.2", "SAVE_DIR": "runs/1b",
                 "NODES": "8", "SBATCH_ARGS": "--partition=gpu --account=lm",
                 "EXTRA_ARGS": "train.lr=3e-4"},
                ["logging.wandb=online"], bindir=fake_sbatch, cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Submitted batch job 42" in proc.stdout
    assert "world 64 = tp 1 × pp 1 × dp 64" in proc.stdout  # checked with the job's size
    args = (fake_sbatch / "sbatch.args").read_text().splitlines()
    assert args == ["--nodes=8", "--partition=gpu", "--account=lm",
                    str(ROOT / "slurm" / "pretrain_1b.sh"), "logging.wandb=online",
                    "train.lr=3e-4"]
    env = dict(line.split("=", 1) for line in (fake_sbatch / "sbatch.env").read_text()
               .splitlines() if "=" in line)
    assert env["CONFIG"] == str(ROOT / "configs" / "1b.yaml")
    assert env["SAVE_DIR"] == str(workdir / "runs" / "1b")  # relative to where it was run
    assert env["NEXTLAT_ROOT"] == str(ROOT)


@pytest.mark.parametrize("script,layers", [("pretrain_350m.sh", 24), ("pretrain_125m.sh", 12)])
def test_other_sizes_use_their_config(script, layers, tmp_path, fake_sbatch):
    proc = _run({"DATA": "builtin", "SAVE_DIR": str(tmp_path / "run")}, script=script,
                bindir=fake_sbatch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{layers} layers" in proc.stdout


def test_a_sweep_array_task_trains_its_own_run(tmp_path):
    """Inside array task 1 of `nextlat-pt sweep --slurm`, the launcher takes run 1's
    directory and overrides from the manifest, and marks the run finished when training
    exits 0 (a stand-in `srun` records the command and succeeds)."""
    from nextlat_pt.sweep.plan import expand, parse_grid

    plan = expand(None, ["train.max_steps=3"], parse_grid(["train.lr=1e-3,2e-3"]), seeds=1,
                  out=str(tmp_path / "sweep"), base_seed=7, sweep_name="s")
    manifest = plan.write()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$(dirname "$0")/srun.args"\n')
    (bindir / "scontrol").write_text("#!/bin/bash\necho localhost\n")
    for tool in ("srun", "scontrol"):
        (bindir / tool).chmod(0o755)
    done = _run({"DATA": "builtin", "CONFIG": "tiny", "NEXTLAT_SWEEP": str(manifest),
                 "SLURM_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "1", "NPROC_PER_NODE": "1",
                 "SLURM_JOB_NODELIST": "localhost", "NEXTLAT_ROOT": str(ROOT)},
                script="pretrain_125m.sh", bindir=bindir)
    assert done.returncode == 0, done.stdout + done.stderr
    args = (bindir / "srun.args").read_text().splitlines()
    run = plan.runs[1]
    assert f"run.dir={run.dir}" in args
    assert args[-len(run.overrides) - 1:] == ["train.max_steps=3", *run.overrides]
    assert (Path(run.dir) / "SWEEP_DONE").is_file()
    assert not (Path(plan.runs[0].dir) / "SWEEP_DONE").exists()
