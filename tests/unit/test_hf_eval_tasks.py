"""The lm-eval tasks that ship with nextlat_pt: held-out data only, well-formed, reproducible."""

from __future__ import annotations

import json

import yaml

from nextlat_pt.eval.tasks import (
    HELD_OUT_FRACTION,
    TASKS,
    held_out_sources,
    next_line_docs,
    write_tasks,
)


def test_tasks_use_exactly_the_files_training_holds_out():
    from nextlat_pt.train.data_plan import VALID_FRACTION

    assert HELD_OUT_FRACTION == VALID_FRACTION


def test_next_line_questions_are_well_formed():
    sources = held_out_sources()
    assert sources
    texts = {name: text for name, text in sources}
    docs = next_line_docs(sources, 50, seed=3)
    assert len(docs) == 50
    for doc in docs:
        choices, answer = doc["choices"], doc["answer"]
        assert len(set(choices)) == 4 and 0 <= answer < 4
        assert doc["context"].endswith("\n")
        # The true line really follows the context in one of the held-out files.
        assert any(doc["context"] + choices[answer] in text for text in texts.values())
    assert next_line_docs(sources, 50, seed=3) == docs
    assert [d["answer"] for d in docs] != [docs[0]["answer"]] * 50  # not always one slot


def test_write_tasks_gives_yaml_with_absolute_data_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = write_tasks("tasks", num_questions=10)
    assert names == list(TASKS)
    for name in names:
        spec = yaml.safe_load((tmp_path / "tasks" / f"{name}.yaml").read_text())
        assert spec["task"] == name
        data = spec["dataset_kwargs"]["data_files"]["test"]
        assert data.startswith("/")  # lm-eval resolves relative paths against the cwd
        rows = [json.loads(line) for line in open(data)]
        assert rows


def _held_out_texts(root):
    """Three small 'held-out' files in two formats, as a user would have them."""
    root.mkdir()
    docs = [f"def f{i}(x):\n    y = x * {i}\n    return y + {i}\n\nprint(f{i}(3))\n"
            for i in range(6)]
    (root / "a.txt").write_text(docs[0])
    (root / "b.txt").write_text(docs[1])
    (root / "more.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs[2:]))
    return docs


def test_tasks_from_the_users_own_text_files(tmp_path):
    from nextlat_pt.eval.tasks import user_sources

    docs = _held_out_texts(tmp_path / "heldout")
    sources = user_sources([tmp_path / "heldout"], text_field="body")
    assert [text for _, text in sources] == docs  # a.txt, b.txt, then the JSON lines
    write_tasks(tmp_path / "tasks", num_questions=5, sources=sources)
    questions = [json.loads(line) for line in open(tmp_path / "tasks" / "next_line.jsonl")]
    assert questions and all(any(q["context"] + q["choices"][q["answer"]] in d for d in docs)
                             for q in questions)
    ppl = [json.loads(line)["text"] for line in open(tmp_path / "tasks" / "code_ppl.jsonl")]
    assert ppl == docs


def test_tasks_from_a_prepared_dataset_decode_its_documents(tmp_path, hf_folder):
    from nextlat_pt.data.commands import prepare_data_main
    from nextlat_pt.eval.tasks import user_sources

    docs = _held_out_texts(tmp_path / "heldout")
    assert prepare_data_main(["--input", str(tmp_path / "heldout" / "*.txt"),
                              str(tmp_path / "heldout" / "more.jsonl"), "--text-field", "body",
                              "--tokenizer", str(hf_folder), "--seq-len", "16",
                              "--output", str(tmp_path / "prepared"), "--no-progress"]) == 0
    sources = user_sources([tmp_path / "prepared"])
    # The packed stream drops a tail shorter than a window: the last document may be cut.
    decoded = [text for _, text in sources]
    assert decoded[:-1] == docs[:len(decoded) - 1] and docs[len(decoded) - 1].startswith(
        decoded[-1])


def test_lm_eval_runs_on_tasks_from_the_users_data(tmp_path, hf_folder, capsys, monkeypatch):
    """The whole path: `eval --lm-eval --task-data ...` on a (random, tiny) model folder."""
    import pytest

    pytest.importorskip("lm_eval")
    from nextlat_pt.eval.cli import eval_main

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # datasets' Arrow cache
    _held_out_texts(tmp_path / "heldout")
    out_json = tmp_path / "lm.json"
    assert eval_main([str(hf_folder), "--lm-eval", "--task-data", str(tmp_path / "heldout"),
                      "--text-field", "body", "--limit", "4", "--task-dir",
                      str(tmp_path / "tasks"), "--json", str(out_json)]) == 0
    assert "lm-eval tasks from 6 documents" in capsys.readouterr().out
    results = json.loads(out_json.read_text())["lm_eval"]
    assert set(results) == set(TASKS)
    assert 0.0 <= results["nextlat_next_line"]["acc,none"] <= 1.0
