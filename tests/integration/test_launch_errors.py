"""Under torchrun a mistake every rank makes is printed once, on its own line: rank 0 says
it, the others are stopped by torchrun before they would (they exit with the same code when
run without a launcher that stops them)."""

from __future__ import annotations

import pytest
from cli_runner import run_cli


def _error_lines(stderr: str, prefix: str) -> list[str]:
    return [line for line in stderr.splitlines() if prefix in line]


@pytest.mark.parametrize("case", ["config", "data_after_process_groups_start"])
def test_an_error_of_every_rank_is_printed_once(tmp_path, case):
    if case == "config":
        args, prefix = ["train", "train.max_step=3"], "nextlat-pt: config error:"
    else:
        empty = tmp_path / "not_a_dataset"
        empty.mkdir()
        args = ["train", f"data.train={empty}", f"run.dir={tmp_path / 'run'}",
                "logging.wandb=disabled", "train.micro_batch_size=4"]
        prefix = "nextlat-pt: error:"
    proc = run_cli(args, nproc=2, expect_code=1, timeout=240)  # torchrun's own code
    assert proc.stderr.count(prefix) == 1, proc.stderr[-3000:]
    lines = _error_lines(proc.stderr, prefix)
    assert lines[0].startswith(prefix), lines[0]  # on its own line, not after another
    assert "exitcode  : 2" in proc.stderr  # rank 0's code, as torchrun reports it
