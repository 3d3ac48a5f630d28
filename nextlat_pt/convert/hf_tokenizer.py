"""Our sentencepiece model -> Hugging Face tokenizer files that tokenize exactly like it.

Built with the `tokenizers` library straight from the .model proto (HF_EXPORT_AND_LMEVAL.md,
snippet A), adapted to our settings: identity normalization, no dummy prefix, byte fallback,
"\\n" as a user-defined piece. transformers' own sentencepiece converters (`LlamaTokenizer`)
rebuild their own normalizer and pre-tokenizer and silently disagree with sentencepiece on
leading whitespace and indentation, so they are not used.

The result encodes like `SentencePieceProcessor.encode`: no BOS or EOS is added (our models
are trained on documents separated by EOS and never see BOS), and special-token text such as
"</s>" in the input is tokenized as plain text, as sentencepiece does.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from nextlat_pt.convert.errors import ConvertError
from nextlat_pt.data.tokenizer import MODEL_FILE_NAME

# sentencepiece piece types (sentencepiece_model.proto)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_BPE, _UNIGRAM = 2, 1  # TrainerSpec.ModelType
_NEVER = -1e9  # a unigram score no segmentation of real text picks

# Probes for the parity check every export runs: whitespace, code, Unicode, specials as text.
_PROBES = [
    "", " ", "  ", "\n", "\n\n\nx", "\t", " hello", "hello  ", "a    b", "x\r\ny",
    "def f(x):\n    return x + 1\n", "\tif a:\n\t\tpass\n", "12345 3.14159 0x1F",
    "naïve café — “quotes” ‘single’ …", "日本語のテキスト", "Привет, мир", "مرحبا",
    "ｆｕｌｌｗｉｄｔｈ ﬁ ² ½ ™", "e\u0301 a\u0300", "nbsp\u00a0here", "zero\u200bwidth",
    "emoji 😀👍🏽👨‍👩‍👧", "\u2581already\u2581meta", "<s> literal </s> <unk> <pad>", "\x00nul",
]


def _load_proto(model_path: Path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(model_path.read_bytes())
    except Exception as err:  # protobuf's DecodeError and friends
        raise ConvertError(f"{model_path} is not a sentencepiece model ({err})") from err
    if not proto.pieces:
        raise ConvertError(f"{model_path} is not a sentencepiece model (no pieces)")
    return proto


def _bpe_merges(proto) -> list[tuple[str, str]]:
    """sentencepiece BPE merges the adjacent pair whose result scores best: rank every split
    (l, r) of each normal piece by that piece's score (ties by id, as sentencepiece)."""
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == _NORMAL}
    ranked = sorted(
        (-score, i, piece[:k], piece[k:])
        for piece, (score, i) in normal.items()
        for k in range(1, len(piece))
        if piece[:k] in normal and piece[k:] in normal
    )
    return [(left, right) for _, _, left, right in ranked]


def build_tokenizer(model_path: Path):
    """A `tokenizers.Tokenizer` equivalent to the sentencepiece model at `model_path`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers

    proto = _load_proto(model_path)
    ns, ts = proto.normalizer_spec, proto.trainer_spec
    if ts.model_type == _BPE:
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        model = models.BPE(vocab=vocab, merges=_bpe_merges(proto), unk_token=ts.unk_piece,
                           fuse_unk=True, byte_fallback=ts.byte_fallback)
    elif ts.model_type == _UNIGRAM:
        # sentencepiece's Viterbi only considers normal (and user-defined) pieces; the others
        # (<s>, </s>, byte pieces, ...) must never win a segmentation of plain text here.
        model = models.Unigram(
            [(p.piece, p.score if p.type in (_NORMAL, _USER_DEFINED) else _NEVER)
             for p in proto.pieces],
            unk_id=ts.unk_id, byte_fallback=ts.byte_fallback)
    else:
        raise ConvertError(f"{model_path}: sentencepiece model type {ts.model_type} is not "
                           f"supported (only BPE and unigram)")
    tok = Tokenizer(model)
    steps = []
    if ns.precompiled_charsmap:  # empty for the identity rule we train with
        steps.append(normalizers.Precompiled(ns.precompiled_charsmap))
    if ns.remove_extra_whitespaces:  # spaces only, as sentencepiece does
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""),
                  normalizers.Replace(Regex(" {2,}"), " ")]
    if ns.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "\u2581"))
    if ns.add_dummy_prefix:  # sentencepiece always prepends (Metaspace would skip a space)
        steps.append(normalizers.Prepend("\u2581"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if ns.add_dummy_prefix:
        dec.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(dec)
    # Control pieces (<s>, </s>, <pad>) and <unk> are special: never produced from text
    # (split_special_tokens below). User-defined pieces ("\n") are cut out of the raw text
    # before anything else, as sentencepiece's normalizer does.
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                            for p in proto.pieces if p.type in (_CONTROL, _UNKNOWN)])
    tok.add_tokens([AddedToken(p.piece, special=False, normalized=False)
                    for p in proto.pieces if p.type == _USER_DEFINED])
    return tok


def _piece(proto, token_id: int, fallback: str) -> str:
    """The piece of `token_id`, or `fallback` when the model has no such id."""
    return proto.pieces[token_id].piece if 0 <= token_id < len(proto.pieces) else fallback


def save_hf_tokenizer(model_path: Path, out_dir: Path, model_max_length: int) -> None:
    """Write tokenizer.json and tokenizer_config.json into `out_dir`, plus the sentencepiece
    model itself as tokenizer.model (for the way back)."""
    from transformers import PreTrainedTokenizerFast

    proto = _load_proto(model_path)
    ts = proto.trainer_spec
    specials = {
        "bos_token": _piece(proto, ts.bos_id, "<s>") if ts.bos_id >= 0 else None,
        "eos_token": _piece(proto, ts.eos_id, "</s>") if ts.eos_id >= 0 else None,
        "unk_token": _piece(proto, ts.unk_id, "<unk>") if ts.unk_id >= 0 else None,
        "pad_token": _piece(proto, ts.pad_id, "<pad>") if ts.pad_id >= 0 else None,
    }
    hf = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(model_path),
        split_special_tokens=True,  # "</s>" in text is text, as in sentencepiece
        clean_up_tokenization_spaces=False,
        add_bos_token=False, add_eos_token=False,
        model_max_length=model_max_length,
        **{k: v for k, v in specials.items() if v is not None},
    )
    hf.save_pretrained(str(out_dir))
    # A LlamaTokenizer class here would make transformers rebuild its own (wrong)
    # normalizer; the generic backend keeps tokenizer.json as written.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "TokenizersBackend"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    shutil.copyfile(model_path, out_dir / MODEL_FILE_NAME)


def probe_texts(extra: list[str] | None = None, seed: int = 0, count: int = 200) -> list[str]:
    """The fixed probes plus `count` random mixtures of their characters (and `extra`)."""
    rng = random.Random(seed)
    alphabet = "".join(_PROBES) + "abcXYZ019 _-()[]{}:;.,'\"#\\/\t\n"
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
            for _ in range(count)]
    return _PROBES + fuzz + list(extra or [])


def check_parity(hf_dir: Path, model_path: Path, texts: list[str]) -> None:
    """Raise ConvertError unless `AutoTokenizer.from_pretrained(hf_dir)` encodes (with and
    without special tokens) and decodes every text exactly as sentencepiece does."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    tok.model_max_length = 1 << 60  # long probes are fine; no "longer than maximum" warning
    for text in texts:
        expected = sp.encode(text, out_type=int)
        got = tok.encode(text, add_special_tokens=False)
        if got != expected or tok.encode(text) != expected:
            at = next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e),
                      min(len(got), len(expected)))
            raise ConvertError(
                f"the exported tokenizer disagrees with sentencepiece on {text[:40]!r}… from "
                f"token {at}: {got[at:at + 6]} vs {expected[at:at + 6]}")
        if tok.decode(expected, skip_special_tokens=True) != sp.decode(expected):
            raise ConvertError(f"the exported tokenizer decodes {text[:60]!r} differently "
                               f"from sentencepiece")
