"""The files that make a checkpoint directory more than its weights, and the one function that carries them along.

litgpt's ``copy_config_files`` predates ``chat_template.jinja`` (where transformers has kept chat templates since
4.47) and knows only three tokenizer files, so a finetuned Hub model lost its template on the way to ``final/``.
Every command that writes a checkpoint (finetune step/best/final directories, ``make_tiny_checkpoint
--tokenizer_from``, ``prune``) copies with :func:`copy_checkpoint_files`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CONFIG_FILES = ("config.json", "generation_config.json", "model_config.yaml")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
TOKENIZER_FOLDERS = ("additional_chat_templates",)


def copy_tokenizer_files(source_dir: Path, out_dir: Path) -> list[str]:
    """Copy every tokenizer file (and the named chat templates folder) ``source_dir`` has; returns their names."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    copied = []
    for name in TOKENIZER_FILES:
        if (source_dir / name).is_file():
            shutil.copyfile(source_dir / name, out_dir / name)
            copied.append(name)
    for name in TOKENIZER_FOLDERS:
        if (source_dir / name).is_dir():
            shutil.copytree(source_dir / name, out_dir / name, dirs_exist_ok=True)
            copied.append(name)
    return copied


def copy_checkpoint_files(source_dir: Path, out_dir: Path) -> list[str]:
    """The model's config files and every tokenizer file of ``source_dir`` into ``out_dir``."""
    copied = []
    for name in CONFIG_FILES:
        if (Path(source_dir) / name).is_file():
            shutil.copyfile(Path(source_dir) / name, Path(out_dir) / name)
            copied.append(name)
    return copied + copy_tokenizer_files(source_dir, out_dir)


def vocabulary_fingerprint(tokenizer) -> str:
    """A hash of what every id means for a litgpt ``Tokenizer`` (its tokens and their ids, added tokens
    included): equal for two checkpoints that tokenize alike, whatever their files' formatting."""
    import hashlib

    h = hashlib.sha256()
    if tokenizer.backend == "huggingface":
        for token, i in sorted(tokenizer.processor.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1]):
            h.update(f"{i}\t{token}\n".encode())
    else:
        for i in range(tokenizer.processor.get_piece_size()):
            h.update(f"{i}\t{tokenizer.processor.id_to_piece(i)}\n".encode())
    return h.hexdigest()[:32]


def tokenizer_record(tokenizer, checkpoint_dir: Path) -> dict:
    """What a tokenized data file records about the tokenizer that made it (checked when a model reads it)."""
    size = (
        tokenizer.processor.get_vocab_size(with_added_tokens=True)
        if tokenizer.backend == "huggingface"
        else tokenizer.vocab_size
    )
    return {"fingerprint": vocabulary_fingerprint(tokenizer), "vocab_size": size, "checkpoint": str(checkpoint_dir)}
