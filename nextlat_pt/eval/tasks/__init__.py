"""lm-eval-harness tasks that ship with nextlat_pt, their data generated locally.

Both are built from the built-in corpus's held-out files (the Python standard library sources
that training never sees), so they run offline on any machine with Python:

- `nextlat_next_line` (multiple choice): given up to ~300 characters of code ending at a line
  break, which of four lines comes next? The distractors are lines from other held-out
  files, re-indented like the true line so indentation alone does not give it away.
  Metrics: acc, acc_norm (chance 0.25).
- `nextlat_code_ppl` (rolling log-likelihood): the first ~1500 characters of each held-out
  file. Metrics: word_perplexity, byte_perplexity, bits_per_byte.

`write_tasks(dir)` writes the JSONL data and the task YAMLs (with absolute data paths: lm-eval
resolves `data_files` against the working directory). The data is a pure function of the
held-out files and the seed.

`user_sources(paths)` builds the same two tasks from the user's own held-out data instead
(`eval --lm-eval --task-data ...`): text files as `prepare-data --input` takes them, or one
prepared dataset (its valid split, else its only one), decoded document by document.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from nextlat_pt.data.builtin_corpus import stdlib_root, stdlib_source_files, validation_mask
from nextlat_pt.data.errors import DataError

# The built-in corpus's held-out share (= nextlat_pt.train.data_plan.VALID_FRACTION; a test checks).
HELD_OUT_FRACTION = 0.02
TASKS = ("nextlat_next_line", "nextlat_code_ppl")
_MIN_LINE = 8  # characters of content for a line to be a question or a distractor
_CONTEXT_CHARS = 300
_PPL_CHARS = 1500
MAX_USER_DOCUMENTS = 2000  # documents read from the user's data (the harness scores each)
_DRAWS_PER_DISTRACTOR = 200  # give a question up when other documents offer no distractor

_MC_YAML = """\
task: nextlat_next_line
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_PPL_YAML = """\
task: nextlat_code_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
"""


def held_out_sources() -> list[tuple[str, str]]:
    """(name, text) of the built-in corpus's validation files, by name."""
    root = stdlib_root()
    files = stdlib_source_files()
    names = []
    for path in files:
        try:
            names.append(path.relative_to(root).as_posix())
        except ValueError:
            names.append(path.as_posix())
    mask = validation_mask(names, HELD_OUT_FRACTION)
    return [(name, path.read_bytes().decode("utf-8"))
            for name, path, held in zip(names, files, mask) if held]


def _indent(line: str) -> str:
    return re.match(r"[ \t]*", line).group(0)


def next_line_docs(sources: list[tuple[str, str]], count: int, seed: int = 0) -> list[dict]:
    """Multiple-choice rows {"context", "choices", "answer"} (see module doc)."""
    rng = random.Random(seed)
    lines_of = {name: text.split("\n") for name, text in sources}
    pool = [(name, line.strip()) for name, lines in lines_of.items() for line in lines
            if len(line.strip()) >= _MIN_LINE]
    candidates = [(name, i) for name, lines in lines_of.items()
                  for i in range(1, len(lines)) if len(lines[i].strip()) >= _MIN_LINE]
    rng.shuffle(candidates)
    docs = []
    for name, i in candidates:
        if len(docs) == count:
            break
        lines = lines_of[name]
        true = lines[i].rstrip()
        start = i - 1  # at least one line of context, at most ~_CONTEXT_CHARS
        while start > 0 and len("\n".join(lines[start - 1:i])) <= _CONTEXT_CHARS:
            start -= 1
        context = "\n".join(lines[start:i]) + "\n"
        indent = _indent(true)
        distractors: list[str] = []
        for _ in range(3 * _DRAWS_PER_DISTRACTOR):
            if len(distractors) == 3:
                break
            other, text = rng.choice(pool)
            option = indent + text
            if other != name and option != true and option not in distractors:
                distractors.append(option)
        if len(distractors) < 3:
            continue  # too little text elsewhere for three distractors
        choices = distractors + [true]
        rng.shuffle(choices)
        docs.append({"context": context, "choices": choices, "answer": choices.index(true)})
    return docs


def ppl_docs(sources: list[tuple[str, str]]) -> list[dict]:
    """Rolling-perplexity rows {"text"}: the start of every held-out file."""
    return [{"text": text[:_PPL_CHARS]} for _, text in sources if text.strip()]


def user_sources(paths: list[str | Path], text_field: str = "text",
                 max_documents: int = MAX_USER_DOCUMENTS) -> list[tuple[str, str]]:
    """(name, text) of the first `max_documents` documents of the user's held-out data: one
    prepared dataset directory, or text files, directories and globs (.txt, .jsonl[.gz|.zst]
    with the text under `text_field`)."""
    if len(paths) == 1 and _is_prepared(Path(paths[0])):
        return _decoded_documents(Path(paths[0]), max_documents)
    from nextlat_pt.data.sources import DocumentReader, expand_inputs

    sources = []
    for i, text in enumerate(DocumentReader(expand_inputs(paths), text_field=text_field)):
        if i == max_documents:
            break
        sources.append((f"document {i}", text))
    if len(sources) < 2:
        raise DataError(f"--task-data {' '.join(map(str, paths))} holds {len(sources)} "
                        f"document(s); the next-line task needs distractors from at least 2")
    return sources


def _is_prepared(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in ("index.json",
                                                                       "prepare.json"))


def _decoded_documents(path: Path, max_documents: int) -> list[tuple[str, str]]:
    """A prepared split's token stream (consecutive windows share one token), cut at EOS and
    decoded with the tokenizer stored beside the shards."""
    from nextlat_pt.data.dataset import ShardedDataset
    from nextlat_pt.data.tokenizer import Tokenizer
    from nextlat_pt.eval.valid_loss import eval_split

    split, note = eval_split(path)
    if note:
        print(note, flush=True)
    ds = ShardedDataset(split)
    try:
        tokenizer = Tokenizer.load(ds.tokenizer_path)
        documents: list[tuple[str, str]] = []
        current: list[int] = []
        for i in range(len(ds)):
            window = ds.get(i)["tokens"].tolist()
            for token in window if i == 0 else window[1:]:
                if token != ds.eos_id:
                    current.append(token)
                    continue
                if current:  # a window may start mid-document: its part is used as well
                    documents.append((f"{split.name} document {len(documents)}",
                                      tokenizer.decode(current)))
                current = []
                if len(documents) == max_documents:
                    return documents
        return documents
    finally:
        ds.close()


def write_tasks(task_dir: Path, num_questions: int = 100, seed: int = 0,
                sources: list[tuple[str, str]] | None = None) -> list[str]:
    """Write both tasks' JSONL and YAML into `task_dir`; returns the task names. `sources`:
    (name, text) documents to build them from (default: the built-in corpus's held-out
    files)."""
    task_dir = Path(task_dir).resolve()
    task_dir.mkdir(parents=True, exist_ok=True)
    sources = held_out_sources() if sources is None else sources
    for name, rows, template in (
        ("next_line", next_line_docs(sources, num_questions, seed), _MC_YAML),
        ("code_ppl", ppl_docs(sources), _PPL_YAML),
    ):
        data = task_dir / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        (task_dir / f"nextlat_{name}.yaml").write_text(
            template.format(data=json.dumps(str(data))), encoding="utf-8")
    return list(TASKS)
