"""`nextlat-pt generate`: text from a checkpoint or an export, plainly or with ψ drafting.

    nextlat-pt generate MODEL_DIR --prompt TEXT [--prompt TEXT ... | --prompts-file F]
        --max-new-tokens N [--greedy | --temperature T [--top-k K] [--top-p P]]
        [--draft-len K | --adaptive threshold|acceptance] [--seed S] [--batch-size B]

The generated text goes to stdout (each prompt followed by its continuation), the statistics
to stderr. Bad input is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nextlat_pt.subcommand import ErrorParser, UsageError, run_subcommand

DTYPES = ("float32", "bfloat16", "float16", "float64")  # torch dtypes, named (no torch import)
SEPARATOR = "\n" + "-" * 40 + "\n"


def build_parser() -> ErrorParser:
    """The argument parser of `nextlat-pt generate`."""
    parser = ErrorParser(
        prog="nextlat-pt generate",
        description="Generate text with a KV cache; with --draft-len or --adaptive, "
                    "self-speculative decoding: ψ drafts through the frozen LM head, one "
                    "transformer pass verifies, and speculative sampling keeps the output "
                    "distribution exactly the model's.",
    )
    parser.add_argument("model", type=Path,
                        help="a checkpoint (step, checkpoints or run directory) or a Hugging "
                             "Face export folder (ψ from nextlat_dynamics.safetensors)")
    parser.add_argument("--prompt", action="append", default=[],
                        help="a prompt (repeat for several)")
    parser.add_argument("--prompts-file", type=Path,
                        help="one prompt per line; a line that is a JSON string (\"...\") is "
                             "decoded, so prompts can hold newlines")
    parser.add_argument("--max-new-tokens", type=int, required=True,
                        help="tokens to generate per prompt (fewer if EOS comes first)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding (argmax)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature (default 1.0)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    draft = parser.add_mutually_exclusive_group()
    draft.add_argument("--draft-len", type=int,
                       help="speculative decoding with a static draft length K")
    draft.add_argument("--adaptive", choices=("threshold", "acceptance"),
                       help="speculative decoding with an adaptive draft length: stop when "
                            "the draft's top probability falls below --threshold, or adapt "
                            "K to acceptance (+1 after a full accept, -1 after a rejection)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="--adaptive threshold: keep drafting while the draft "
                             "distribution's top probability is at least this (with "
                             "--greedy: of ψ's softmax at τ=1; default 0.5)")
    parser.add_argument("--max-draft-len", type=int, default=8,
                        help="--adaptive: the longest draft (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="prompts decoded together (default 8); speculative rows accept "
                             "independently in one batch")
    parser.add_argument("--tokenizer", type=Path,
                        help="the sentencepiece tokenizer.model (default: the one beside the "
                             "model or recorded in the checkpoint)")
    parser.add_argument("--ignore-eos", action="store_true",
                        help="do not stop a prompt at the end-of-document token")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="compute dtype (default float32)")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda[:N] (default: cuda if available)")
    parser.add_argument("--jsonl", action="store_true",
                        help="stdout: one JSON object per prompt with the keys prompt, "
                             "completion and new_ids (the generated token ids)")
    parser.add_argument("--stats-json", type=Path,
                        help="also write the statistics to this JSON file")
    return parser


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts of --prompt and --prompts-file, in order."""
    prompts = list(args.prompt)
    if args.prompts_file is not None:
        if not args.prompts_file.is_file():
            raise UsageError(f"--prompts-file {args.prompts_file} does not exist")
        for number, line in enumerate(args.prompts_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            if line.startswith('"'):
                try:
                    line = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UsageError(f"{args.prompts_file}:{number}: not a JSON string "
                                     f"({err})") from None
            prompts.append(line)
    if not prompts:
        raise UsageError("no prompt: give --prompt TEXT or --prompts-file FILE")
    return prompts


def _check_args(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} must be >= 1")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be >= 1")
    if args.draft_len is not None and args.draft_len < 1:
        raise UsageError(f"--draft-len {args.draft_len} must be >= 1")
    if args.max_draft_len < 1:
        raise UsageError(f"--max-draft-len {args.max_draft_len} must be >= 1")
    if args.greedy and (args.temperature != 1.0 or args.top_k or args.top_p != 1.0):
        raise UsageError("--greedy takes no --temperature, --top-k or --top-p")
    if not args.temperature > 0:
        raise UsageError(f"--temperature {args.temperature} must be > 0 (use --greedy)")
    if args.top_k < 0:
        raise UsageError(f"--top-k {args.top_k} must be >= 0")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p {args.top_p} must be in (0, 1]")
    if not 0 < args.threshold <= 1:
        raise UsageError(f"--threshold {args.threshold} must be in (0, 1]")


def _policy(args: argparse.Namespace):
    from nextlat_pt.generate.policies import AcceptanceDraft, ConfidenceDraft, StaticDraft

    if args.draft_len is not None:
        return StaticDraft(args.draft_len)
    if args.adaptive == "threshold":
        return ConfidenceDraft(args.threshold, args.max_draft_len)
    if args.adaptive == "acceptance":
        return AcceptanceDraft(min(2, args.max_draft_len), 1, args.max_draft_len)
    return None


def _tokenizer(args: argparse.Namespace, weights):
    from nextlat_pt.data.tokenizer import MODEL_FILE_NAME, Tokenizer

    path = args.tokenizer or weights.tokenizer_path
    if path is None:
        raise UsageError(f"no tokenizer found for {args.model}; pass --tokenizer PATH (the "
                         f"tokenizer.model it was trained with)")
    path = path / MODEL_FILE_NAME if path.is_dir() else path
    if not path.is_file():
        raise UsageError(f"tokenizer {path} not found")
    tokenizer = Tokenizer.load(path)
    want = weights.tokenizer_fingerprint
    if want and tokenizer.fingerprint != want:
        raise UsageError(f"tokenizer {path} (fingerprint {tokenizer.fingerprint[:12]}…) is "
                         f"not the one the model was trained with ({want[:12]}…)")
    if tokenizer.vocab_size != weights.shape.vocab_size:
        raise UsageError(f"tokenizer {path} has {tokenizer.vocab_size} tokens, the model "
                         f"{weights.shape.vocab_size}")
    return tokenizer


def _encode(tokenizer, prompts: list[str], context: int, max_new: int) -> list[list[int]]:
    encoded = []
    for i, text in enumerate(prompts, 1):
        # An empty prompt starts a new document: after the end-of-document token.
        ids = tokenizer.encode(text) or [tokenizer.eos_id]
        if len(ids) >= context:
            raise UsageError(f"prompt {i} has {len(ids)} tokens, the model only {context} "
                             f"positions; shorten it")
        if len(ids) + max_new > context:
            raise UsageError(f"prompt {i} has {len(ids)} tokens; with --max-new-tokens "
                             f"{max_new} that exceeds the model's {context} positions; "
                             f"shorten it or generate fewer tokens")
        encoded.append(ids)
    return encoded


def stats_line(stats, mode: str) -> str:
    """The one-line summary printed on stderr."""
    parts = [mode, f"{stats.sequences} prompt(s)", f"{stats.new_tokens} new tokens",
             f"{stats.wall_s:.2f} s", f"{stats.tokens_per_s:.1f} tokens/s",
             f"{stats.cycles} cycles"]
    if stats.drafted:
        parts += [f"drafted {stats.drafted}",
                  f"accepted {stats.accepted} ({100 * stats.acceptance_rate:.1f}%)",
                  f"accepted/cycle {stats.accepted_per_cycle:.2f}",
                  f"tokens/cycle {stats.tokens_per_cycle:.2f}"]
    return " | ".join(parts)


def _run(args: argparse.Namespace) -> None:
    _check_args(args)  # every argument and path check before torch is imported
    prompts = read_prompts(args)
    if not args.model.exists():
        raise UsageError(f"{args.model} does not exist; give a checkpoint (step, checkpoints "
                         f"or run directory) or a Hugging Face export folder")
    import torch

    from nextlat_pt.generate.sampling import SamplingParams
    from nextlat_pt.generate.speculative import GenerationStats, generate
    from nextlat_pt.generate.weights import load_weights, target_and_drafter

    policy = _policy(args)
    weights = load_weights(args.model)
    if policy is not None and not weights.can_draft:
        raise UsageError(f"{weights.description} has no ψ and no MTP heads (a next-token "
                         f"model); speculative decoding needs a NextLat or MTP model: drop "
                         f"--draft-len/--adaptive")
    tokenizer = _tokenizer(args, weights)
    ids = _encode(tokenizer, prompts, weights.shape.max_position_embeddings,
                  args.max_new_tokens)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    target, drafter = target_and_drafter(weights, getattr(torch, args.dtype), device,
                                         with_drafter=policy is not None)
    sampling = SamplingParams(greedy=args.greedy, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    eos = None if args.ignore_eos else tokenizer.eos_id
    stats = GenerationStats()
    for start in range(0, len(ids), args.batch_size):
        chunk = ids[start: start + args.batch_size]
        result = generate(target, chunk, args.max_new_tokens, sampling, drafter=drafter,
                          policy=policy, generator=generator, eos_id=eos)
        stats.merge(result.stats)
        for offset, new in enumerate(result.tokens):
            _print_sample(args, prompts[start + offset], new, tokenizer, start + offset)
    sys.stdout.flush()
    mode = f"{sampling.describe()}, " + (policy.describe() if policy else "plain decoding")
    print(stats_line(stats, mode), file=sys.stderr)
    if args.stats_json is not None:
        record = {"model": str(args.model), "mode": mode, **stats.to_dict()}
        args.stats_json.write_text(json.dumps(record, indent=2) + "\n")


def _print_sample(args: argparse.Namespace, prompt: str, new: list[int], tokenizer,
                  index: int) -> None:
    completion = tokenizer.decode([t for t in new if t != tokenizer.eos_id])
    if args.jsonl:
        print(json.dumps({"prompt": prompt, "completion": completion, "new_ids": new}))
        return
    if index:
        sys.stdout.write(SEPARATOR)
    sys.stdout.write(prompt + completion + "\n")


def generate_main(argv: list[str] | None = None) -> int:
    """`nextlat-pt generate ...`; returns the exit code (2 on bad input)."""
    return run_subcommand(build_parser(), _run, argv)
