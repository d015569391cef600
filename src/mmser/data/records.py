"""The utterance record every reader yields, and the dropped-utterance log they share."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from mmser.errors import UserError

if TYPE_CHECKING:
    import pandas as pd


@dataclasses.dataclass
class Utterance:
    """One labelled utterance: id, audio path, transcript, class, speaker, session, extra metadata."""

    id: str
    path: str
    text: str
    label: str
    speaker: str
    session: str
    meta: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DropLog:
    """Every utterance left out, with its reason, so that the report accounts for all input rows."""

    entries: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def add(self, utt_id: str, reason: str, detail: str = "") -> None:
        """Record one dropped utterance."""
        self.entries.append({"id": utt_id, "reason": reason, "detail": detail})

    def counts(self) -> dict[str, int]:
        """Dropped utterances per reason."""
        return dict(sorted(Counter(e["reason"] for e in self.entries).items()))


SEPARATORS = (",", ";", "\t")  # a spreadsheet saved in a European locale writes `;`


def sniff_separator(header: str) -> str:
    """The separator that splits a CSV's header line into the most fields (`,` on a tie)."""
    return max(SEPARATORS, key=lambda sep: (len(header.split(sep)), sep == ","))


def read_table(path: str | Path) -> "pd.DataFrame":
    """An utterance table or manifest CSV with every column read as text, as written.

    Ids such as `0001` stay `0001` (pandas would make them the integer 1 and miss them everywhere else), and an
    empty cell stays "" (not NaN): the one reader for every table of utterances. A BOM is skipped and the
    separator (`,`, `;` or tab) is the one that splits the header.
    """
    import pandas as pd  # here, so that `mmser predict` checks a CSV's header without importing pandas

    with open(path, encoding="utf-8-sig") as f:
        separator = sniff_separator(f.readline())
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", sep=separator)


class IdMismatchError(UserError, KeyError):
    """Two pipeline files that must list the same utterances do not (one was made from another table)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def check_ids(wanted: list[str], present: list[str] | set[str] | dict, *, wanted_from: str, present_in: str) -> None:
    """Raise IdMismatchError, naming both sides and a sample of each, unless every id of `wanted` is in `present`."""
    present = set(present)
    missing = [u for u in wanted if u not in present]
    if not missing:
        return
    extra = sorted(present - set(wanted))
    message = (f"{len(missing)} of the {len(wanted)} utterances of {wanted_from} are not in {present_in} "
               f"(e.g. {missing[0]!r})")
    if extra:
        message += f", which lists {len(extra)} others (e.g. {extra[0]!r})"
    numbers = {_as_number(u) for u in extra} - {None}
    if numbers and all(_as_number(u) in numbers for u in missing[:100]):
        message += ("; the ids differ only in how a number is written (e.g. '0001' and '1'): one file was written "
                    "by a version that read ids as numbers")
    raise IdMismatchError(f"{message}; the two were made from different versions of the data: rerun `dvc repro` "
                          "(it reruns every stage whose inputs changed)")


def _as_number(utt_id: str) -> float | None:
    try:
        return float(utt_id)
    except ValueError:
        return None
