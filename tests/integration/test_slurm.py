"""The real `slurm/pretrain_1b.sh` on a real two-node Slurm cluster (scripts/slurm_cluster.sh:
munge, slurmctld and two slurmd on loopback addresses of this machine, installed with apt-get
if needed, torn down afterwards by PID).

- A two-node job (one torchrun per node, gloo on CPU, configs/1b.yaml shrunk to a tiny model)
  trains and checkpoints; `scancel --signal=USR1 --batch` (the same delivery as
  `#SBATCH --signal=B:USR1@600`) reaches the batch script, which asks both nodes to stop; every
  rank saves at the next step boundary, the script requeues the job, the job restarts
  (SLURM_RESTART_COUNT=1), resumes from exactly that checkpoint and finishes: the final
  checkpoint is train.max_steps and metrics.jsonl has each step once.
- A job preempted on two nodes (DP=2, ZeRO-1) and requeued while the second is drained,
  shrunk to one node as it waits, resumes on one (DP=1, the one-rank engine) with the
  optimizer state, and its losses equal a two-rank run never interrupted, to 1e-5.
- A job with a missing dataset fails at once with the message, and is not requeued.

Skipped only where it cannot run: not root, or Slurm missing with no way to install it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cli_runner import read_jsonl, run_cli

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "scripts" / "slurm_cluster.sh"
LOCK = Path(tempfile.gettempdir()) / "nextlat-slurm-ci.lock"
NODES = 2
STEPS = 80
TINY = [  # configs/1b.yaml (the script's default) shrunk to a model a CPU trains in seconds
    "model.num_layers=2", "model.hidden_size=64", "model.num_heads=4", "model.seq_len=32",
    "nextlat.psi_width=128", "train.micro_batch_size=2", "train.global_batch_size=8",
    f"train.max_steps={STEPS}", "train.warmup_steps=2", "train.decay_steps=10",
    "train.eval_batches=2", "checkpoint.interval=10", "logging.interval=1",
    "logging.wandb=disabled", "logging.plot=false",
]


def _free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _pick_port() -> int:
    """A slurmctld port P with P+1..P+NODES free on the nodes' addresses (below the jobs'
    rendezvous ports, 20000-31999, and the ephemeral range)."""
    for port in range(16100, 19900, 10):
        hosts = [("127.0.0.1", port)] + [(f"127.0.0.1{i}", port + i) for i in range(1, NODES + 1)]
        if all(_free(h, p) for h, p in hosts):
            return port
    raise RuntimeError("no free ports for the test cluster")


def _scontrol_job(env: dict[str, str], job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True,
                         text=True, timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


@pytest.fixture(scope="module")
def cluster():
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("the Slurm test cluster needs root on Linux (apt-get, munge, slurmd)")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed and apt-get is not available to install it")
    with open(LOCK, "w") as lock:  # one test cluster per machine at a time
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another Slurm test cluster held {LOCK} for 15 minutes")
                time.sleep(2)
        base = Path(tempfile.mkdtemp(prefix="nlslurm-", dir="/tmp"))  # short: socket paths
        env = dict(os.environ, SLURM_CI_DIR=str(base), SLURM_CI_NODES=str(NODES),
                   SLURM_CI_PORT=str(_pick_port()))
        started = time.monotonic()
        up = subprocess.run(["bash", str(CLUSTER), "up"], env=env, capture_output=True,
                            text=True, timeout=900)
        try:
            if up.returncode == 3:
                pytest.skip(f"Slurm cannot be installed here: {up.stderr.strip()[-500:]}")
            assert up.returncode == 0, f"cluster up failed:\n{up.stdout}\n{up.stderr}"
            env["SLURM_CONF"] = str(base / "slurm.conf")
            print(f"cluster up in {time.monotonic() - started:.1f} s")
            yield env
        finally:
            down = subprocess.run(["bash", str(CLUSTER), "down"], env=env, capture_output=True,
                                  text=True, timeout=300)
            shutil.rmtree(base, ignore_errors=True)
            assert down.returncode == 0, f"cluster down failed:\n{down.stdout}\n{down.stderr}"


def _job_env(cluster_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in cluster_env.items()
           if not k.startswith(("SLURM_", "SBATCH_")) and k not in (
               "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
               "CONFIG", "DATA", "SAVE_DIR", "NODES", "EXTRA_ARGS", "NPROC_PER_NODE")}
    env.update(SLURM_CONF=cluster_env["SLURM_CONF"], PYTHON=sys.executable,
               NEXTLAT_ROOT=str(ROOT), NPROC_PER_NODE="1", OMP_NUM_THREADS="1", **extra)
    return env


def _submit(env: dict[str, str], log: Path, args: list[str]) -> str:
    proc = subprocess.run(["sbatch", "--parsable", f"--nodes={NODES}", f"--output={log}",
                           str(ROOT / "slurm" / "pretrain_1b.sh"), *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def _wait(predicate, timeout: float, what: str, env, job, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            info = _scontrol_job(env, job)
            tail = log.read_text()[-6000:] if log.exists() else "(no log)"
            raise AssertionError(f"timed out waiting for {what}; job state "
                                 f"{info.get('JobState')} {info.get('Reason')}\n{tail}")
        time.sleep(0.25)


def _finished(env, job) -> bool:
    return _scontrol_job(env, job).get("JobState") in (
        "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def test_two_node_job_is_preempted_requeued_resumes_and_finishes(cluster, tmp_path,
                                                                   corpus_cache):
    run_dir = tmp_path / "run"
    log = tmp_path / "job.log"
    env = _job_env(cluster, DATA="builtin", SAVE_DIR=str(run_dir),
                   EXTRA_ARGS=f"data.cache_dir={corpus_cache}")
    started = time.monotonic()
    job = _submit(env, log, TINY)
    latest = run_dir / "checkpoints" / "latest"

    def first_checkpoint() -> bool:
        if latest.exists():
            return True
        assert not _finished(env, job), f"the job ended early:\n{log.read_text()[-6000:]}"
        return False

    _wait(first_checkpoint, 300, "the first checkpoint", env, job, log)
    first = latest.read_text().strip()
    # What `#SBATCH --signal=B:USR1@600` does near the time limit, now.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True,
                   timeout=30)
    signalled = time.monotonic()
    _wait(lambda: _finished(env, job), 400, "the job to finish", env, job, log)
    finished = time.monotonic()

    info = _scontrol_job(env, job)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-6000:]
    assert info["Restarts"] == "1", f"expected exactly one requeue\n{text[-6000:]}"

    # The first run: both nodes, signal forwarded to the ranks of both nodes, saved, requeued.
    assert "job " + job + " start (SLURM_RESTART_COUNT=0) on 2 node(s)" in text
    assert "received SIGUSR1: asking every node to stop" in text
    for node in ("cinode1", "cinode2"):
        assert f"[nextlat-node {node}] stop requested: SIGUSR1 -> ranks" in text, text[-6000:]
    stopped = re.search(r"stopping at step (\d+) on a preemption signal", text)
    assert stopped, f"the ranks did not stop on the signal\n{text[-6000:]}"
    step = int(stopped.group(1))
    assert step < STEPS, f"the run finished (step {step}) before the signal arrived"
    assert f"PREEMPTED step {step})" in text
    assert f"requeueing job {job} (scontrol requeue)" in text
    assert "scancel failed" not in text

    # The second run: restarted by Slurm, resumed from the preemption checkpoint, finished.
    assert "job " + job + " start (SLURM_RESTART_COUNT=1) on 2 node(s)" in text
    assert f"resuming from {run_dir}/checkpoints/step_{step:07d} (step {step}, " \
           f"optimizer restored, RNG restored)" in text
    assert text.count("resuming from") == 1
    assert f"step {STEPS}/{STEPS}" in text
    assert f"training finished; newest checkpoint: step_{STEPS:07d}" in text

    assert latest.read_text().strip() == f"step_{STEPS:07d}"
    state = json.loads((run_dir / "checkpoints" / f"step_{STEPS:07d}" /
                        "trainer_state.json").read_text())
    assert state["step"] == STEPS
    assert not (run_dir / "PREEMPTED").exists()
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, STEPS + 1)), "metrics.jsonl must have each step once"
    print(f"first checkpoint {first} after {signalled - started:.1f} s; preempted at step "
          f"{step}; requeued, resumed and finished {finished - signalled:.1f} s after the "
          f"signal")


def _scontrol(env: dict[str, str], *args: str) -> None:
    subprocess.run(["scontrol", *args], env=env, check=True, timeout=30)


def test_requeued_job_resumes_on_one_node_and_continues_the_losses(cluster, tmp_path,
                                                                   corpus_cache):
    """Leg 1 on two nodes (DP=2, ZeRO-1); cinode2 is drained while it runs (it keeps its job,
    takes no new one). The requeued job, while it waits, is shrunk to one node
    (`scontrol update JobId=N NumNodes=1 NumTasks=1 NumCPUs=1`, docs/multinode.md): leg 2
    runs on cinode1 alone (DP=1, the one-rank engine) with the optimizer state, and the
    losses equal a two-rank run never interrupted, to 1e-5."""
    steps = 30
    run_dir = tmp_path / "run"
    log = tmp_path / "job.log"
    env = _job_env(cluster, DATA="builtin", SAVE_DIR=str(run_dir),
                   EXTRA_ARGS=f"data.cache_dir={corpus_cache} train.max_steps={steps}")
    job = _submit(env, log, TINY)
    latest = run_dir / "checkpoints" / "latest"
    _wait(lambda: latest.exists() or _finished(env, job), 300, "the first checkpoint", env,
          job, log)
    assert latest.exists(), f"the job ended early:\n{log.read_text()[-6000:]}"
    _scontrol(env, "update", "NodeName=cinode2", "State=DRAIN", "Reason=shrink-test")
    try:
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True,
                       timeout=30)

        def requeued_and_waiting() -> bool:
            info = _scontrol_job(env, job)
            return info.get("Restarts") == "1" and info.get("JobState") == "PENDING"

        _wait(requeued_and_waiting, 300, "the requeued job to wait", env, job, log)
        # A requeued job keeps its task and CPU counts; all three must shrink together.
        _scontrol(env, "update", f"JobId={job}", "NumNodes=1", "NumTasks=1", "NumCPUs=1")
        _wait(lambda: _finished(env, job), 600, "the job to finish", env, job, log)
    finally:
        _scontrol(env, "update", "NodeName=cinode2", "State=RESUME")
    text = log.read_text()
    info = _scontrol_job(env, job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-6000:]
    assert "job " + job + " start (SLURM_RESTART_COUNT=0) on 2 node(s)" in text, text[-6000:]
    assert "job " + job + " start (SLURM_RESTART_COUNT=1) on 1 node(s)" in text, text[-6000:]
    stopped = re.search(r"stopping at step (\d+) on a preemption signal", text)
    assert stopped, text[-6000:]
    step = int(stopped.group(1))
    assert step < steps, f"the run finished (step {step}) before the signal arrived"
    assert f"resuming from {run_dir}/checkpoints/step_{step:07d} (step {step}, optimizer " \
           f"restored, RNG fresh)" in text, text[-6000:]
    assert "layout changed (tp=1 pp=1 dp=2" in text and "dp=1 vpp=0 zero=1 optimizer=local" \
        in text, text[-6000:]

    # The same run on two ranks, never interrupted (the job's resolved config).
    reference = tmp_path / "reference"
    run_cli(["train", str(run_dir / "config.yaml"), f"run.dir={reference}",
             "checkpoint.interval=0"], nproc=2)
    ours = {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r}
    theirs = {r["step"]: r["loss"] for r in read_jsonl(reference / "metrics.jsonl")
              if "loss" in r}
    assert sorted(ours) == list(range(1, steps + 1)), "metrics.jsonl must have each step once"
    for s in ours:
        assert ours[s] == pytest.approx(theirs[s], rel=1e-5), f"step {s} (resumed at {step})"
    print(f"preempted at step {step} on two nodes; resumed on one, the losses continue")


def test_missing_dataset_fails_the_job_at_once_without_requeue(cluster, tmp_path):
    log = tmp_path / "job.log"
    env = _job_env(cluster, DATA=str(tmp_path / "no-such-dataset"),
                   SAVE_DIR=str(tmp_path / "run"))
    started = time.monotonic()
    job = _submit(env, log, TINY)
    _wait(lambda: _finished(env, job), 120, "the job to fail", env, job, log)
    info = _scontrol_job(env, job)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", info
    assert info["Restarts"] == "0"
    assert (f"ERROR: DATA: dataset directory {tmp_path / 'no-such-dataset'} does not exist"
            in log.read_text())
    assert not (tmp_path / "run").exists()
    assert time.monotonic() - started < 60


def test_a_signal_during_start_up_still_stops_the_run_once_it_trains(cluster, tmp_path,
                                                                      corpus_cache):
    """The signal arrives while the ranks are still starting (their SIGUSR1 handler is not
    installed yet, so they ignore it): the node wrappers repeat it until it is taken."""
    steps = 30
    run_dir = tmp_path / "run"
    log = tmp_path / "job.log"
    env = _job_env(cluster, DATA="builtin", SAVE_DIR=str(run_dir), NEXTLAT_RESEND_S="2",
                   EXTRA_ARGS=f"data.cache_dir={corpus_cache} train.max_steps={steps}")
    job = _submit(env, log, TINY)

    def ranks_started() -> bool:  # rank 0 writes config.yaml right after the process groups
        if (run_dir / "config.yaml").exists():
            return True
        assert not _finished(env, job), f"the job ended early:\n{log.read_text()[-6000:]}"
        return False

    _wait(ranks_started, 300, "the ranks to start", env, job, log)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True,
                   timeout=30)
    _wait(lambda: _finished(env, job), 400, "the job to finish", env, job, log)
    info = _scontrol_job(env, job)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-6000:]
    stopped = re.search(r"stopping at step (\d+) on a preemption signal", text)
    assert stopped, f"the signal was lost during start-up\n{text[-6000:]}"
    step = int(stopped.group(1))
    assert step < steps
    assert f"resuming from {run_dir}/checkpoints/step_{step:07d}" in text
    assert f"training finished; newest checkpoint: step_{steps:07d}" in text
    records = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert records == list(range(1, steps + 1))
    print(f"signalled during start-up: stopped at step {step}, "
          f"{text.count('again (a rank still starting up ignores it)')} repeat(s)")
