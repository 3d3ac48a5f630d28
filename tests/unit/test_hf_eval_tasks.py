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
    from nextlat_pt.train.run import VALID_FRACTION

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
