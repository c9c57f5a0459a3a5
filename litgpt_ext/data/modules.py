"""A command's ``--data`` as a DataModule, and the datasets it holds (ours and litgpt's alike)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from litgpt.data import DataModule

from litgpt_ext.data.sft import SFTData
from litgpt_ext.errors import UserError


def resolve_data(data: DataModule | Path | str | None, default: type[DataModule] = SFTData) -> DataModule:
    """``--data PATH`` is shorthand for the method's own DataModule (``default``) on that path."""
    if data is None:
        name = default.__name__
        raise UserError(f"pass --data PATH (or --data {name} --data.path PATH, or a litgpt DataModule)", field="data")
    if isinstance(data, (str, Path)):
        return default(path=Path(data))
    return data


def datasets_of(data: DataModule) -> tuple[Sequence, Sequence]:
    """The (train, validation) datasets of a DataModule. Ours expose both; litgpt's ``JSON`` (and others) declare a
    ``val_dataset`` field but fill ``test_dataset`` (their validation split), so that is taken when it is the one
    set; DataModules exposing neither give them through their dataloaders."""
    train = getattr(data, "train_dataset", None)
    val = getattr(data, "val_dataset", None)
    if val is None:
        val = getattr(data, "test_dataset", None)
    if train is None or val is None:
        train = train if train is not None else data.train_dataloader().dataset
        val = val if val is not None else data.val_dataloader().dataset
    if not len(train):
        raise UserError("the data has no training samples", field="data")
    if not len(val):
        raise UserError("the data has no validation samples (set a val split)", field="data")
    return train, val


def ready_data(
    data: DataModule, tokenizer, checkpoint_dir: Path, batch_size: int, max_seq_length: int | None, **connect
) -> DataModule:
    """``data`` connected to the model's tokenizer (chat rows render with ``checkpoint_dir``'s own chat template),
    prepared and set up: the one way every command reads its data."""
    if hasattr(data, "student_dir"):
        data.student_dir = Path(checkpoint_dir)
    data.connect(tokenizer=tokenizer, batch_size=batch_size, max_seq_length=max_seq_length, **connect)
    data.prepare_data()
    data.setup()
    return data
