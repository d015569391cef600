"""Bad input, as opposed to a bug: the errors a user fixes from their message alone.

Stages (`run_stage`) and the `mmser` command print a `UserError` in one line and exit 1; anything else is a bug
and keeps its traceback. Raise a `UserError` (or a subclass) only where input is validated: params, manifests,
corpus folders, command-line arguments, input files, weights on disk.
"""

from __future__ import annotations


class UserError(Exception):
    """Input the user can fix from the message alone (it names the key, row, column or file, and what is allowed)."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named (in params.yaml or on the command line) does not exist."""


def one_line(err: BaseException) -> str:
    """An error's message on one line (a message may quote a multi-line value)."""
    return " ".join(str(err).split()) or type(err).__name__
