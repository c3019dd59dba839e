"""``text``: ``data_dir/input.txt`` (UTF-8) for character-level language models.

Read by :func:`pemn.training.text.load_text`, not as images and labels; :func:`dataset_info` gives its vocabulary
size as ``num_classes``.
"""

from __future__ import annotations

from pemn.training.data.catalog import DatasetEntry, DatasetInfo, PathArg, register_dataset
from pemn.training.text import TEXT_FILE, read_text


def _text_info(data_dir: PathArg, image_size: int | None) -> DatasetInfo:
    """The ``text`` dataset (:mod:`pemn.training.text`): ``num_classes`` is the vocabulary size of the file."""
    path, text = read_text(data_dir)
    vocab = len(set(text))
    return DatasetInfo(
        name="text",
        num_classes=vocab,
        in_channels=1,
        image_size=1,
        mean=(),
        std=(),
        files=(TEXT_FILE,),
        description=f"character-level text from {path} ({len(text):,} characters, {vocab} distinct; first 90 % "
        "train, last 10 % validation)",
    )


register_dataset(DatasetEntry(
    "text", _text_info, None, serves="char-lm",
    summary="character-level text: DIR/input.txt (UTF-8), first 90 % train / last 10 % validation (needs --data-dir)",
    not_images="a character-level corpus, not images and labels; read it with "
               "pemn.training.text.load_text(data_dir, block_size)"))
