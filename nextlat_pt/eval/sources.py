"""What `eval` is pointed at: a nextlat_pt checkpoint or a Hugging Face folder, checked,
its recorded validation data and tokenizer looked up without loading the weights."""

from __future__ import annotations

import json
from pathlib import Path

from nextlat_pt.convert.errors import ConvertError
from nextlat_pt.eval.models import HFModel, NextLatModel, hf_tokenizer_fingerprint, is_hf_dir


def check_model_dir(src: Path) -> bool:
    """Refuse anything but a checkpoint or an HF folder; True for an HF folder."""
    if not src.is_dir():
        raise ConvertError(f"{src} is not a directory; give a checkpoint or an HF folder")
    if is_hf_dir(src):
        return True
    from nextlat_pt.convert.source import is_nextlat_checkpoint_dir

    if not is_nextlat_checkpoint_dir(src):
        raise ConvertError(f"{src} is neither a nextlat_pt checkpoint nor a Hugging Face "
                           f"model folder (no config.json)")
    return False


def recorded_valid(model_dir: Path, hf: bool) -> Path | None:
    """The validation data recorded with the model (trainer state or export info)."""
    from nextlat_pt.convert.to_hf import EXPORT_INFO

    try:
        if hf:
            info = json.loads((model_dir / EXPORT_INFO).read_text())
            valid = (info.get("data") or {}).get("valid")
            return Path(valid) if valid and Path(valid).exists() else None
        from nextlat_pt.convert.source import open_checkpoint

        ckpt = open_checkpoint(model_dir, verify=False)
    except (OSError, json.JSONDecodeError, ConvertError):
        return None
    return ckpt.recorded_path((ckpt.state.get("data") or {}).get("valid"))


def tokenizer_fingerprint(src: Path, hf: bool) -> str | None:
    """The model's tokenizer fingerprint, read without loading the weights."""
    if hf:
        return hf_tokenizer_fingerprint(src)
    from nextlat_pt.convert.source import open_checkpoint

    return (open_checkpoint(src, verify=False).state.get("tokenizer") or {}).get("fingerprint")


def open_model(src: Path, hf: bool) -> HFModel | NextLatModel:
    """Load the model at `src` for scoring (float32, this process)."""
    if hf:
        return HFModel(src)
    from nextlat_pt.convert.source import open_checkpoint

    return NextLatModel(open_checkpoint(src))
