"""The package's user-error type.

:class:`UserInputError` marks a problem with what tvcsp was given — a file, a dataset, a name, a setting, a run
folder, downloaded data — as opposed to a fault in tvcsp or its dependencies. Its message says what and why in
one line. The command line (:mod:`tvcsp.cli`) prints these (and missing files, ``OSError``) as one line
``tvcsp: error: ...`` with exit status 2; every other exception propagates with its traceback.

It subclasses ``ValueError``, so code that catches ``ValueError`` keeps working. Its subclasses elsewhere:
:class:`~tvcsp.checkpoint.CheckpointMismatchError`, :class:`~tvcsp.tasks.RunMismatchError`,
:class:`~tvcsp.data.CrystalParseError`.
"""

from __future__ import annotations

__all__ = ["UserInputError"]


class UserInputError(ValueError):
    """Input tvcsp cannot use (a bad file, name, setting or run folder); the message is one line."""
