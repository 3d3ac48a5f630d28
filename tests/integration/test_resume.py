"""Checkpoints, resume and preemption with nothing lost.

- A run SIGKILLed at a random point after its first checkpoint, then relaunched with the same
  command, logs the same per-step losses and ends with the same weights as an uninterrupted
  run, bit for bit (fp32, dropout on): one process, DP=2 with ZeRO-1, PP=2.
- A SIGKILL during a save leaves `latest` on the previous complete checkpoint; the relaunch
  skips the half-written one with a warning naming it.
- SIGUSR1 on one rank makes every rank save at the next step boundary and exit with code 75.
- A checkpoint saved with TP=2 loads into TP=1 and back with the weights unchanged, and the
  run says what starts fresh (the random streams; tests/distributed/
  test_resume_on_another_layout.py checks that the rest continues the run).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch
from cli_runner import read_jsonl, run_cli, start_cli

from nextlat_pt.config import load_config
from nextlat_pt.model.gpt import NextLatGPT
from nextlat_pt.train.build import model_spec
from nextlat_pt.train.checkpoint import load_model_weights

STEPS = 24
COMMON = [
    f"train.max_steps={STEPS}", "logging.interval=1", "logging.wandb=disabled",
    "logging.plot=false",
    "model.num_layers=2", "model.hidden_size=64", "model.num_heads=4", "model.seq_len=32",
    "train.micro_batch_size=2", "train.global_batch_size=8", "train.eval_batches=2",
    "model.hidden_dropout=0.1", "model.attention_dropout=0.1", "checkpoint.interval=4",
    "nextlat.horizon=2", "train.warmup_steps=2",
]
LAYOUTS = {"single": (1, []), "dp2_zero1": (2, ["parallel.zero_stage=1"]),
           "pp2": (2, ["parallel.pp=2"])}


def _args(run_dir: Path, cache: Path, extra: list[str]) -> list[str]:
    return ["train", *COMMON, *extra, f"run.dir={run_dir}", f"data.cache_dir={cache}"]


def _train_records(run_dir: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["ce"], r["latent"], r["kl"], r["grad_norm"])
            for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    ckpt = run_dir / "checkpoints" / f"step_{step:07d}"
    cfg = load_config(ckpt / "config.yaml", ["parallel.tp=1", "parallel.pp=1"])
    vocab = json.loads((ckpt / "trainer_state.json").read_text())["tokenizer"]["vocab_size"]
    model = NextLatGPT(model_spec(cfg, vocab))
    load_model_weights([model], ckpt)
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def _wait_for(predicate, timeout: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _kill_group(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sigkill_at_a_random_point_then_relaunch_is_bit_exact(parallel_tp1, tmp_path,
                                                               corpus_cache, layout):
    nproc, extra = LAYOUTS[layout]
    reference = tmp_path / "uninterrupted"
    run_cli(_args(reference, corpus_cache, extra), nproc=nproc)

    run_dir = tmp_path / "killed"
    args = _args(run_dir, corpus_cache, extra)
    # A random point after the first checkpoint (step 4): while step `kill_after` + 1 runs.
    kill_after = random.randint(5, STEPS - 6)
    proc = start_cli(args, nproc=nproc, log=tmp_path / "killed.log")
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: (run_dir / "checkpoints" / "latest").exists() and metrics.exists()
              and len(read_jsonl(metrics)) >= kill_after, 240, f"step {kill_after}", proc)
    assert proc.poll() is None, "the run finished before it could be killed"
    _kill_group(proc)
    assert len(_train_records(run_dir)) < STEPS
    run_cli(args, nproc=nproc)  # the same command resumes

    info = f"(layout {layout}, killed after step {kill_after})"
    assert _train_records(run_dir) == _train_records(reference), info
    ours, theirs = _weights(run_dir, STEPS), _weights(reference, STEPS)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), f"{name} differs {info}"


def test_sigkill_during_save_keeps_latest_on_the_previous_checkpoint(tmp_path, corpus_cache):
    run_dir = tmp_path / "run"
    args = _args(run_dir, corpus_cache, [])
    proc = start_cli(args, log=tmp_path / "save.log",
                     extra_env={"NEXTLAT_PT_TEST_SAVE_DELAY": "1.5"})
    half = run_dir / "checkpoints" / "step_0000008.tmp"
    _wait_for(lambda: (half / "trainer_state.json").exists(), 240, "the second save", proc)
    _kill_group(proc)

    root = run_dir / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_0000004"
    assert not (root / "step_0000008").exists()
    assert not (half / "COMPLETE").exists()

    relaunch = run_cli(args)
    assert "skipping" in relaunch.stdout and "step_0000008.tmp" in relaunch.stdout
    assert "resuming from" in relaunch.stdout and "step_0000004" in relaunch.stdout
    assert [r[0] for r in _train_records(run_dir)] == list(range(1, STEPS + 1))


def test_sigusr1_on_one_rank_stops_every_rank_with_a_checkpoint(tmp_path, corpus_cache):
    run_dir = tmp_path / "run"
    args = _args(run_dir, corpus_cache, ["train.max_steps=400", "checkpoint.interval=0"])
    proc = start_cli(args, nproc=2, log=tmp_path / "usr1.log")
    _wait_for(lambda: (run_dir / "metrics.jsonl").exists()
              and len(read_jsonl(run_dir / "metrics.jsonl")) >= 2, 240, "training", proc)
    workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
               if "nextlat_pt" in " ".join(c.cmdline())]
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGUSR1)  # one rank only
    proc.wait(timeout=240)
    step = int((run_dir / "PREEMPTED").read_text())
    ckpt = run_dir / "checkpoints" / f"step_{step:07d}"
    assert (ckpt / "COMPLETE").exists()
    assert sorted(p.name for p in (ckpt / "optim").iterdir()) == [
        "index.json", "rank_00000.pt", "rank_00001.pt"]
    assert step < 400
    log = (tmp_path / "usr1.log").read_text()
    assert "exit code 75" in log and "preemption signal" in log


def test_exit_duration_saves_and_exits_75(tmp_path, corpus_cache):
    run_dir = tmp_path / "run"
    proc = run_cli(_args(run_dir, corpus_cache, ["train.exit_duration_mins=0.0001"]),
                   expect_code=75)
    assert "time budget" in proc.stdout
    assert (run_dir / "checkpoints" / "step_0000001" / "COMPLETE").exists()


def test_tp2_checkpoint_loads_into_tp1_and_back(parallel_tp1, tmp_path, corpus_cache):
    tp2 = tmp_path / "tp2"
    run_cli(_args(tp2, corpus_cache, ["parallel.tp=2", "train.max_steps=2",
                                      "checkpoint.interval=0"]), nproc=2)
    # TP=2 -> TP=1: a new run starting from it (no further steps) writes the same weights.
    tp1 = tmp_path / "tp1"
    out = run_cli(_args(tp1, corpus_cache, ["train.max_steps=2", "checkpoint.interval=0",
                                            f"checkpoint.load={tp2 / 'checkpoints'}"]))
    assert "layout changed" in out.stdout and "start fresh" in out.stdout
    back = tmp_path / "back"
    run_cli(_args(back, corpus_cache, ["parallel.tp=2", "train.max_steps=2",
                                       "checkpoint.interval=0",
                                       f"checkpoint.load={tp1 / 'checkpoints'}"]), nproc=2)
    original = _weights(tp2, 2)
    for run in (tp1, back):
        loaded = _weights(run, 2)
        for name, tensor in original.items():
            assert torch.equal(loaded[name], tensor), f"{run.name}: {name}"


def test_async_save_writes_the_same_checkpoints_as_sync(tmp_path, corpus_cache):
    """Background writers see the state as of the save (copy-on-write fork), so the async
    checkpoints are byte-identical to the synchronous ones, and complete."""
    import hashlib

    runs = {}
    for mode in ("sync", "async"):
        run_dir = tmp_path / mode
        run_cli(_args(run_dir, corpus_cache, ["train.max_steps=8",
                                              f"checkpoint.async_save={mode == 'async'}"]))
        runs[mode] = run_dir / "checkpoints"
    for step in ("step_0000004", "step_0000008"):
        for mode in runs:
            assert (runs[mode] / step / "COMPLETE").exists(), f"{mode} {step}"
        files = sorted(p.relative_to(runs["sync"] / step)
                       for p in (runs["sync"] / step).rglob("*")
                       if p.is_file() and p.suffix in (".distcp", ".pt"))
        assert files
        for rel in files:
            digests = {hashlib.sha256((runs[m] / step / rel).read_bytes()).hexdigest()
                       for m in runs}
            assert len(digests) == 1, f"{step}/{rel} differs between sync and async"


def _flip_a_byte(ckpt: Path) -> None:
    """Corrupt a checkpoint the way bit rot does: one byte of its largest weights file."""
    blob = max((p for p in (ckpt / "model").iterdir() if p.is_file()),
               key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))


def test_relaunch_past_corrupt_checkpoints_keeps_what_it_writes(tmp_path, corpus_cache):
    """With every kept checkpoint corrupt, a relaunch starts over in one line and its own new
    checkpoints survive pruning (the corrupt ones fill `checkpoint.keep` no more); `latest`
    names the newest of them and the next relaunch resumes from it."""
    run_dir = tmp_path / "run"
    run_cli(_args(run_dir, corpus_cache, ["train.max_steps=20", "checkpoint.interval=5"]))
    root = run_dir / "checkpoints"
    corrupt = ["step_0000010", "step_0000015", "step_0000020"]
    assert sorted(p.name for p in root.glob("step_*")) == corrupt
    for name in corrupt:
        _flip_a_byte(root / name)

    short = _args(run_dir, corpus_cache, ["train.max_steps=7", "checkpoint.interval=5"])
    out = run_cli(short).stdout
    assert f"no usable checkpoint in {root}: starting from step 0" in out
    assert sum("fails its checksum" in line for line in out.splitlines()) == 3
    assert sorted(p.name for p in root.glob("step_*")) == ["step_0000005", "step_0000007",
                                                            *corrupt]
    assert (root / "latest").read_text().strip() == "step_0000007"
    assert (root / "step_0000007" / "COMPLETE").exists()
    again = run_cli(short).stdout  # the next relaunch finds step 7
    assert f"{run_dir} is already at step 7 (step_0000007)" in again


def test_ctrl_c_saves_and_exits_130_then_relaunches_say_what_they_do(tmp_path, corpus_cache):
    """Ctrl-C (SIGINT to the whole foreground group) saves at the next step boundary, says
    where, writes loss.png and exits 130 without a traceback; a relaunch at train.max_steps
    has nothing to do and says so; one with more steps names the schedule keys that changed."""
    run_dir = tmp_path / "run"
    log = tmp_path / "ctrl_c.log"
    args = _args(run_dir, corpus_cache, ["train.max_steps=400", "checkpoint.interval=0",
                                         "logging.plot=true"])
    proc = start_cli(args, log=log)
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(read_jsonl(metrics)) >= 2, 240, "training",
              proc)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=240) == 130
    out = log.read_text()
    step = int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    assert f"stopping at step {step} on an interrupt (Ctrl-C" in out
    assert f"checkpoint {run_dir / 'checkpoints' / f'step_{step:07d}'}; exit code 130" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert (run_dir / "loss.png").is_file() and not (run_dir / "PREEMPTED").exists()

    done = run_cli(_args(run_dir, corpus_cache, [f"train.max_steps={step}"]))
    assert f"is already at step {step} (step_{step:07d}), train.max_steps={step}: nothing " \
           f"to do" in done.stdout
    assert "validation" not in done.stdout

    more = run_cli(_args(run_dir, corpus_cache, [f"train.max_steps={step + 2}",
                                                 "checkpoint.interval=0"]))
    assert f"train.max_steps 400 -> {step + 2}" in more.stdout
    assert [r["step"] for r in read_jsonl(metrics) if "loss" in r][-1] == step + 2
