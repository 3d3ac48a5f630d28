"""Trainer callbacks for everything around the step: progress line, metrics.jsonl, wandb.

Two kinds of hook, told apart by where they run:
- `Callback`: the logging rank only (the last rank, which owns the last pipeline stage where
  the losses live); no collectives. Progress line, metrics file, wandb. Each has one job.
- `StepHook`: every rank, at the same point after each step, so it may run collectives (the
  checkpointer, `train/checkpointer.py`, is one).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO


class Callback:
    """Hooks the trainer calls; override what you need."""

    def on_train_start(self, info: dict[str, Any]) -> None:
        """Once, before the first step, with static facts about the run."""

    def on_log(self, metrics: dict[str, Any]) -> None:
        """Every `logging.interval` steps (and the last), with that step's metrics."""

    def on_eval(self, metrics: dict[str, Any]) -> None:
        """After each validation pass."""

    def on_train_end(self, summary: dict[str, Any]) -> None:
        """Once, after the last step."""


class StepHook:
    """Called on every rank after each step (after logging and validation), in lockstep:
    collectives are allowed, and every rank must take the same branches."""

    def on_step_end(self, trainer: Any) -> None:
        """After step `trainer.state.step`."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.4f}"
    return str(value)


def _clock(seconds: float) -> str:
    """H:MM:SS."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ConsoleProgress(Callback):
    """One progress line per logged step: step, loss terms, lr, then the speed over the
    steps since the previous line (ms/step and tokens/s of wall time, checkpoint saves and
    validation included), MFU when the device's peak is known, elapsed time and ETA."""

    KEYS = ("loss", "ce", "latent", "kl", "lr", "grad_norm")

    def __init__(self, max_steps: int, stream: TextIO = sys.stdout, start_step: int = 0,
                 start_tokens: int = 0, flops_per_token: float | None = None,
                 peak_flops: float | None = None) -> None:
        """`start_*`: where a resumed run starts; `peak_flops`: the dense peak of all
        devices together (MFU is left out without)."""
        self.max_steps = max_steps
        self.stream = stream
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self._started = time.monotonic()
        self._last = (start_step, self._started, start_tokens)  # step, time, tokens seen

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def on_train_start(self, info: dict[str, Any]) -> None:
        for key, value in info.items():
            self._print(f"  {key}: {value}")
        self._started = time.monotonic()
        self._last = (self._last[0], self._started, self._last[2])

    def on_log(self, metrics: dict[str, Any]) -> None:
        now = time.monotonic()
        width = len(str(self.max_steps))
        parts = [f"step {metrics['step']:>{width}}/{self.max_steps}"]
        parts += [f"{k} {_fmt(metrics[k])}" for k in self.KEYS if metrics.get(k) is not None]
        last_step, last_time, last_tokens = self._last
        steps = metrics["step"] - last_step
        if steps > 0 and now > last_time:
            step_s = (now - last_time) / steps
            tokens_per_s = (metrics["tokens"] - last_tokens) / (now - last_time)
            parts += [f"{1000 * step_s:,.0f} ms/step", f"{tokens_per_s:,.0f} tok/s"]
            if self.flops_per_token and self.peak_flops:
                mfu = self.flops_per_token * tokens_per_s / self.peak_flops
                parts.append(f"MFU {100 * mfu:.1f}%")
            parts.append(f"elapsed {_clock(now - self._started)}")
            if metrics["step"] < self.max_steps:
                parts.append(f"ETA {_clock((self.max_steps - metrics['step']) * step_s)}")
        self._last = (metrics["step"], now, metrics["tokens"])
        self._print(" | ".join(parts))

    def on_eval(self, metrics: dict[str, Any]) -> None:
        self._print(
            f"validation at step {metrics['step']}: ce {metrics['val_ce']:.4f} "
            f"(ppl {math.exp(min(metrics['val_ce'], 50)):.1f})"
        )


class JsonlMetrics(Callback):
    """metrics.jsonl: one JSON object per logged step (and per validation pass)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def on_log(self, metrics: dict[str, Any]) -> None:
        self._write(metrics)

    def on_eval(self, metrics: dict[str, Any]) -> None:
        self._write(metrics)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self._file.close()


class WandbMetrics(Callback):
    """wandb, offline by default: never waits on the network unless asked to (`online`)."""

    def __init__(self, mode: str, project: str, name: str, run_dir: Path,
                 config: dict[str, Any], run_id: str | None = None) -> None:
        import wandb

        self._wandb = wandb
        # A resumed run continues the same wandb run (its id is kept in the checkpoint).
        self.run = wandb.init(
            project=project,
            name=name,
            dir=str(run_dir),
            mode=mode,
            config=config,
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.run_id = self.run.id

    def on_log(self, metrics: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in metrics.items() if v is not None}, step=metrics["step"])

    def on_eval(self, metrics: dict[str, Any]) -> None:
        self.run.log(metrics, step=metrics["step"])

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(summary)
        self.run.finish()
