"""What the command line tells a user: every `--help` works and says what is true, and
the lm-eval install hint is a command a shell accepts, given before any work is done."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nextlat_pt.cli import main as cli_main


@pytest.mark.parametrize("argv,needles", [
    (["ckpt", "--help"], ("list", "inspect")),
    (["make-task", "--help"], ("manhattan",)),
    (["make-task", "manhattan", "--help"], ("--output", "--grid")),
    (["generate", "--help"], ("new_ids",)),
])
def test_help_exits_0_and_says_what_is_there(argv, needles, capsys):
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    for needle in needles:
        assert needle in out, f"{needle!r} not in `nextlat-pt {' '.join(argv)}`:\n{out}"


def test_lm_eval_hint_is_valid_shell_and_comes_before_any_work(hf_folder, monkeypatch,
                                                               capsys):
    from nextlat_pt.eval import lm_eval_check
    from nextlat_pt.eval.cli import eval_main

    real = lm_eval_check.importlib.util.find_spec
    monkeypatch.setattr(lm_eval_check.importlib.util, "find_spec",
                        lambda name, *a: None if name == "lm_eval" else real(name, *a))
    assert eval_main([str(hf_folder), "--lm-eval", "--data", str(hf_folder)]) == 2
    out, err = capsys.readouterr()
    assert "validation" not in out and "exported" not in out  # nothing ran first
    line = next(line for line in err.splitlines() if line.startswith("nextlat-pt: error:"))
    command = line.split(" with: ", 1)[1].split(" (in a source checkout", 1)[0]
    assert "lm-eval[hf]==" in command and "torch==" in command
    assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0, command


def test_the_export_sets_no_generation_max_length(tmp_path):
    from nextlat_pt.convert.to_hf import _generation_config

    _generation_config().save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert "max_length" not in saved and saved["eos_token_id"] == 2


HELP_AND_USAGE_ERRORS = [
    ["train", "--help"], ["convert", "--help"], ["eval", "--help"], ["eval", "compare", "--help"],
    ["generate", "--help"], ["ckpt", "--help"], ["ckpt", "list", "--help"],
    ["ckpt", "inspect", "--help"], ["make-task", "--help"], ["prepare-data", "--help"],
    ["train-tokenizer", "--help"], ["bench", "--help"],
    ["generate", "runs/x", "--prompt", "a"],  # no --max-new-tokens
    ["generate", "/no/such/model", "--prompt", "a", "--max-new-tokens", "4"],
    ["eval", "runs/x", "--max-batches", "0"],
]


@pytest.mark.parametrize("argv", HELP_AND_USAGE_ERRORS, ids=" ".join)
def test_help_and_argument_errors_answer_before_torch_is_imported(argv):
    """What makes `--help` take well under a second: nothing heavy is imported first."""
    code = ("import sys\nfrom nextlat_pt.cli import main\ntry:\n    rc = main(sys.argv[1:])\n"
            "except SystemExit as e:\n    rc = e.code\n"
            "heavy = sorted(m for m in ('torch', 'megatron', 'deepspeed', 'transformers') "
            "if m in sys.modules)\nprint('HEAVY', heavy, rc, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=120)
    report = proc.stderr.strip().splitlines()[-1]
    assert report.startswith("HEAVY [] "), (report, proc.stderr[-2000:])
    assert report.split()[-1] in ("0", "2"), report
