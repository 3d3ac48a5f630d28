"""The data commands: `nextlat-pt train-tokenizer` and `nextlat-pt prepare-data`.

Each is a plain function of its argument list that returns an exit status: 0 on success, 2 on
bad input or data (one line `nextlat-pt: error: ...` on stderr, argparse's usage errors alike),
130 when interrupted. Progress bars go to stderr, and only on a terminal unless asked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from nextlat_pt.data.errors import DataError
from nextlat_pt.data.sources import SUPPORTED, TXT_SPLITS, DocumentReader, expand_inputs, iter_lines
from nextlat_pt.data.tokenizer import (
    MODEL_FILE_NAME,
    Tokenizer,
    available_cpus,
    train_sentencepiece_on,
)


def _error(message: str) -> int:
    print(f"nextlat-pt: error: {message}", file=sys.stderr, flush=True)
    return 2


def _run(parser: argparse.ArgumentParser, argv: Sequence[str],
         body: Callable[[argparse.Namespace], int]) -> int:
    """Parse, run, and turn the expected failures into exit statuses."""
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exit_:  # argparse has printed the usage and the error
        return int(exit_.code or 0)
    try:
        return body(args)
    except (DataError, ValueError, FileNotFoundError) as err:
        return _error(str(err))
    except KeyboardInterrupt:
        print(f"\n{parser.prog}: interrupted; run the same command again to finish "
              "(finished work is kept)", file=sys.stderr)
        return 130


def _progress_flag(args: argparse.Namespace) -> bool | None:
    return False if args.no_progress else (True if args.progress else None)


def _add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_GLOB",
                   help=f"input files, globs or directories ({SUPPORTED})")
    p.add_argument("--text-field", default="text",
                   help="JSON field that holds the document text (default: text)")
    p.add_argument("--txt-split", choices=TXT_SPLITS, default="file",
                   help="what one document is in a .txt file: the whole file (default), each "
                        "line, or each blank-line-separated paragraph")
    p.add_argument("--seed", type=int, default=0, help="seed of every sampling choice")
    bars = p.add_mutually_exclusive_group()
    bars.add_argument("--progress", action="store_true", help="progress bar even off a terminal")
    bars.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---------------------------------------------------------------- train-tokenizer


def _tokenizer_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nextlat-pt train-tokenizer",
        description="Train a sentencepiece tokenizer (byte fallback, code-safe normalization) on "
                    "the lines of the input documents; writes DIR/tokenizer.model.",
    )
    _add_input_options(p)
    p.add_argument("--vocab-size", type=int, required=True, help="pieces, special ids included")
    p.add_argument("--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    p.add_argument("--special-tokens", nargs="+", default=[], metavar="TOKEN",
                   help="extra special tokens: reserved ids that encoding text never produces "
                        "(after <unk>=0 <s>=1 </s>=2 <pad>=3)")
    p.add_argument("--user-symbols", nargs="+", default=[], metavar="PIECE",
                   help="pieces always kept whole when they occur in text")
    p.add_argument("--max-sentences", type=int, default=1_000_000,
                   help="train on a seeded uniform sample of this many lines (0: all)")
    p.add_argument("--threads", type=int, default=None,
                   help="sentencepiece trainer threads (default: all CPUs; recorded in the "
                        "model, so fix it for bit-identical models across machines)")
    return p


def _sentences(reader: DocumentReader, progress: bool | None) -> Callable[[], Iterator[str]]:
    """The line source for the tokenizer trainer, with a progress bar on each pass."""
    from tqdm import tqdm

    passes = iter(["counting lines", "reading lines"])

    def lines() -> Iterator[str]:
        desc = next(passes, "reading lines")
        disable = None if progress is None else not progress
        reader.documents = 0  # count this pass only
        with tqdm(desc=desc, unit=" lines", file=sys.stderr, disable=disable,
                  dynamic_ncols=True, mininterval=0.5) as bar:
            for line in iter_lines(iter(reader)):
                bar.update()
                yield line

    return lines


def _train_tokenizer(args: argparse.Namespace) -> int:
    files = expand_inputs(args.input)
    reader = DocumentReader(files, args.text_field, args.txt_split)
    threads = args.threads or available_cpus()
    print(f"training a {args.model_type} tokenizer (vocab {args.vocab_size}) on "
          f"{len(files)} file(s), {threads} thread(s)...", flush=True)
    t0 = time.perf_counter()
    path = train_sentencepiece_on(
        _sentences(reader, _progress_flag(args)),
        Path(args.output),
        args.vocab_size,
        args.model_type,
        args.max_sentences,
        threads,
        seed=args.seed,
        control_symbols=args.special_tokens,
        user_defined_symbols=args.user_symbols,
        inputs_desc=f"the {len(files)} input file(s)",
    )
    tok = Tokenizer.load(path)
    info = {
        "model": MODEL_FILE_NAME,
        "fingerprint": tok.fingerprint,
        "vocab_size": tok.vocab_size,
        "model_type": args.model_type,
        "special_tokens": {s: tok.piece_to_id(s) for s in args.special_tokens},
        "user_symbols": args.user_symbols,
        "eos_id": tok.eos_id,
        "inputs": [str(f.resolve()) for f in files],
        "text_field": args.text_field,
        "txt_split": args.txt_split,
        "max_sentences": args.max_sentences,
        "seed": args.seed,
    }
    (Path(args.output) / "tokenizer.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {path} ({reader.documents} documents read; vocab {tok.vocab_size}, "
          f"fingerprint {tok.fingerprint[:16]}) in {time.perf_counter() - t0:.1f} s")
    return 0


def train_tokenizer_main(argv: list[str]) -> int:
    """`nextlat-pt train-tokenizer --input ... --vocab-size N --output DIR`."""
    return _run(_tokenizer_parser(), argv, _train_tokenizer)


# ---------------------------------------------------------------- prepare-data


def _prepare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nextlat-pt prepare-data",
        description="Tokenize documents on all cores, append EOS, pack into samples of "
                    "seq_len+1 tokens and write webdataset shards with an index. Same input, "
                    "same bytes, whatever --workers; re-running finishes an interrupted run.",
    )
    _add_input_options(p)
    p.add_argument("--tokenizer", required=True, metavar="DIR",
                   help="a train-tokenizer output directory or a .model file")
    p.add_argument("--seq-len", type=int, required=True, help="the model's sequence length")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="output directory (DIR/train, DIR/valid)")
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizer processes (default: every CPU available)")
    p.add_argument("--valid-fraction", type=float, default=0.0,
                   help="share of documents held out in DIR/valid (chosen by a hash of each "
                        "document's text and --seed; default 0: none)")
    p.add_argument("--shard-samples", type=int, default=0,
                   help="samples per shard (default 0: shards of about 256 MB)")
    p.add_argument("--prompt-field", default=None, metavar="NAME",
                   help="JSONL field holding each record's prompt: the document is the prompt "
                        "then the --text-field completion, and training computes the loss on "
                        "the completion (and its EOS) only")
    return p


def _prepare(args: argparse.Namespace) -> int:
    from nextlat_pt.data.prepare import prepare_data

    summary = prepare_data(
        args.input, args.tokenizer, args.seq_len, args.output,
        text_field=args.text_field, txt_split=args.txt_split, workers=args.workers,
        valid_fraction=args.valid_fraction, shard_samples=args.shard_samples, seed=args.seed,
        prompt_field=args.prompt_field, progress=_progress_flag(args),
        log=lambda m: print(m, flush=True),
    )
    for split, info in summary.splits.items():
        print(f"{split}: {info['samples']:,} samples of {args.seq_len + 1} tokens from "
              f"{info['documents']:,} documents ({info['tokens']:,} tokens) in {info['shards']} "
              f"shard(s): {info['written']} written, {info['kept']} already complete "
              f"-> {info['path']}")
    if summary.tokens_tokenized:
        print(f"tokenized {summary.tokens_tokenized:,} tokens of {summary.documents_tokenized:,} "
              f"documents in {summary.seconds:.1f} s ({summary.tokens_per_s:,.0f} tokens/s)")
    return 0


def prepare_data_main(argv: list[str]) -> int:
    """`nextlat-pt prepare-data --input ... --tokenizer DIR --seq-len N --output DIR`."""
    return _run(_prepare_parser(), argv, _prepare)
