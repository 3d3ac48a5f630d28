"""`nextlat-pt convert`: argument parsing and one-line errors around the two converters.

    nextlat-pt convert --to hf CHECKPOINT_DIR OUT_DIR [--dtype D] [--max-shard-size 2GB]
    nextlat-pt convert --to nextlat HF_DIR OUT_DIR [parallel.tp=2 parallel.pp=2 ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nextlat_pt.convert.errors import ConvertError
from nextlat_pt.subcommand import ErrorParser, UsageError, run_subcommand


def build_parser() -> ErrorParser:
    parser = ErrorParser(
        prog="nextlat-pt convert",
        description="Convert a nextlat_pt checkpoint (any TP/PP layout) to a Hugging Face "
                    "LlamaForCausalLM folder, or a Llama folder to a nextlat_pt checkpoint.",
    )
    parser.add_argument("--to", required=True, choices=("hf", "nextlat"),
                        help="hf: checkpoint -> HF folder; nextlat: HF folder -> checkpoint")
    parser.add_argument("src", type=Path,
                        help="--to hf: a step, checkpoints or run directory; --to nextlat: "
                             "a Hugging Face folder with tokenizer.model")
    parser.add_argument("out", type=Path, help="the directory to write (must not exist or be "
                                               "empty unless --force)")
    parser.add_argument("overrides", nargs="*",
                        help="--to nextlat: section.key=value for the checkpoint's config, e.g. "
                             "parallel.tp=2 parallel.pp=2 nextlat.objective=ntp")
    parser.add_argument("--dtype", default="auto",
                        choices=("auto", "float32", "bfloat16", "float16"),
                        help="--to hf: weight dtype (auto: as saved)")
    parser.add_argument("--max-shard-size", default="2GB",
                        help="--to hf: largest safetensors shard (default 2GB); memory is "
                             "bounded by one shard")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="--to hf: the tokenizer.model, if the checkpoint's recorded path "
                             "is gone (checked by fingerprint)")
    parser.add_argument("--allow-tokenizer-mismatch", action="store_true",
                        help="--to hf: export even if the HF tokenizer differs from "
                             "sentencepiece on a probe (unigram tie-breaking)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _run(args: argparse.Namespace) -> None:
    from nextlat_pt.convert.safetensors_writer import parse_size

    if args.to == "hf":
        if args.overrides:
            raise UsageError(f"config overrides ({' '.join(args.overrides)}) only apply to "
                             f"--to nextlat")
        if (args.src / "config.json").is_file() and not (args.src / "config.yaml").is_file():
            raise ConvertError(f"{args.src} is a Hugging Face folder; convert it with "
                               f"--to nextlat")
        try:
            max_shard = parse_size(args.max_shard_size)
        except ValueError:
            raise UsageError(f"--max-shard-size {args.max_shard_size!r} is not a size like "
                             f"2GB or 500MB") from None
        from nextlat_pt.convert.to_hf import export_to_hf

        result = export_to_hf(args.src, args.out, dtype=args.dtype, max_shard_bytes=max_shard,
                              tokenizer=args.tokenizer, progress=not args.no_progress,
                              force=args.force,
                              allow_tokenizer_mismatch=args.allow_tokenizer_mismatch)
        print(f"exported step {result.step} ({result.num_parameters:,} parameters"
              f"{', with ψ' if result.has_psi else ''}) to {result.out_dir}: "
              f"{', '.join(result.files)}")
        return
    from nextlat_pt.convert.to_nextlat import import_from_hf

    result = import_from_hf(args.src, args.out, args.overrides, force=args.force)
    p = result.config.parallel
    psi = {"loaded": "ψ from nextlat_dynamics.safetensors",
           "fresh": "ψ freshly initialised", "none": "no ψ (objective ntp)"}[result.psi]
    print(f"wrote checkpoint {result.out_dir} (for tp={p.tp} pp={p.pp}; {psi}); continue "
          f"pretraining with: nextlat-pt train {result.out_dir}/config.yaml "
          f"checkpoint.load={result.out_dir}")


def convert_main(argv: list[str] | None = None) -> int:
    """`nextlat-pt convert ...`; returns the exit code (2 on bad input)."""
    return run_subcommand(build_parser(), _run, argv)
