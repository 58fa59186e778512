"""C-Eval from a directory in the official CSV layout (it does not ship offline).

Layout, as in the official ``ceval-exam.zip``::

    {root}/val/{subject}_val.csv     evaluated (official protocol: the val split)
    {root}/dev/{subject}_dev.csv     five exemplars per subject for few-shot
    {root}/subject_mapping.json      optional: {"computer_network": ["Computer Network",
                                      "计算机网络", "STEM"], ...} from the official repository

Columns ``id,question,A,B,C,D,answer`` plus ``explanation`` in dev (ignored). Files are
read as UTF-8 (a byte-order mark is tolerated). ``MCItem.subject`` is the Chinese name
when a mapping is available (from ``subject_names`` or ``subject_mapping.json``), so the
prompt header reads as the official one; otherwise the file handle with ``_`` replaced by
spaces. The uid is ``ceval/{split}/{handle}/{id}``. The full benchmark has 52 subjects;
any subset found on disk is loaded, and ``CEvalData.subjects`` says which.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from drencoder.data.items import LETTERS, MCItem
from drencoder.errors import AssetError, ConfigError

CEVAL_SUBJECT_COUNT = 52
_COLUMNS = ("id", "question", "A", "B", "C", "D", "answer")


@dataclass(frozen=True)
class CEvalData:
    val: tuple[MCItem, ...]
    dev: Mapping[str, tuple[MCItem, ...]]
    """Few-shot exemplars keyed by ``MCItem.subject`` (empty when ``dev/`` is absent)."""
    subjects: tuple[str, ...]
    """File handles (e.g. ``computer_network``) that were loaded, sorted."""


def _read_csv(path: Path, *, split: str, handle: str, subject: str) -> list[MCItem]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise AssetError(
                f"{path}: missing columns {missing}; expected {list(_COLUMNS)} "
                f"(+ explanation), got {reader.fieldnames}; use the unmodified CSV files "
                f"of the official ceval-exam.zip (first line: {','.join(_COLUMNS)})"
            )
        items = []
        for row in reader:
            answer = (row["answer"] or "").strip()
            if answer not in ("A", "B", "C", "D"):
                raise AssetError(
                    f"{path}: row id={row['id']!r} has answer={answer!r}, expected one of A-D"
                )
            items.append(
                MCItem(
                    question=row["question"],
                    choices=tuple(row[c] for c in "ABCD"),
                    answer=LETTERS.index(answer),
                    subject=subject,
                    uid=f"ceval/{split}/{handle}/{row['id']}",
                )
            )
    return items


def _subject_names(root: Path, given: Mapping[str, str] | None) -> dict[str, str]:
    if given is not None:
        return dict(given)
    mapping = root / "subject_mapping.json"
    if not mapping.is_file():
        return {}
    with mapping.open(encoding="utf-8") as fh:
        data = json.load(fh)
    return {handle: names[1] for handle, names in data.items()}


def load_ceval(
    root: str | Path,
    *,
    subjects: Sequence[str] | None = None,
    subject_names: Mapping[str, str] | None = None,
) -> CEvalData:
    """Load ``val`` (and ``dev`` when present) for every subject, or only ``subjects``
    (file handles). ``subject_names`` maps handle to display name and overrides
    ``subject_mapping.json``."""
    root = Path(root)
    if not root.is_dir():
        raise AssetError(
            f"C-Eval directory {str(root)!r} does not exist; C-Eval does not ship offline: "
            f"unzip the official ceval-exam.zip and pass the folder that holds val/ and dev/"
        )
    val_dir = root / "val"
    if not val_dir.is_dir():
        raise AssetError(
            f"no C-Eval val directory at {val_dir}; pass the folder that holds val/ and dev/ "
            f"of the official ceval-exam.zip"
        )
    found = sorted(p.name.removesuffix("_val.csv") for p in val_dir.glob("*_val.csv"))
    if subjects is not None:
        unknown = sorted(set(subjects) - set(found))
        if unknown:
            raise ConfigError(f"C-Eval subjects {unknown} not found in {val_dir}; found {found}")
        found = sorted(set(subjects))
    if not found:
        raise AssetError(f"{val_dir} holds no *_val.csv files")
    names = _subject_names(root, subject_names)
    val: list[MCItem] = []
    dev: dict[str, tuple[MCItem, ...]] = {}
    for handle in found:
        subject = names.get(handle, handle.replace("_", " "))
        val.extend(
            _read_csv(val_dir / f"{handle}_val.csv", split="val", handle=handle, subject=subject)
        )
        dev_path = root / "dev" / f"{handle}_dev.csv"
        if dev_path.is_file():
            dev[subject] = tuple(_read_csv(dev_path, split="dev", handle=handle, subject=subject))
    return CEvalData(val=tuple(val), dev=dev, subjects=tuple(found))
