"""The utterance record every reader yields, and the dropped-utterance log they share."""

from __future__ import annotations

import dataclasses
from collections import Counter


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
