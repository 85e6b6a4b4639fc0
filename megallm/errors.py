"""The errors a user can fix, one base class for all of them.

Every `MegallmError` carries a one-line message that says what is wrong and how to fix
it. Library code raises them; the entry points (megallm.cli) turn one into that line on
stderr and the error's exit code, in one place (`megallm.cli.report`). Anything else
that escapes is a bug in megallm and keeps its traceback.
"""

from __future__ import annotations


class MegallmError(Exception):
    """A problem the user can fix; `str(error)` is one line saying what and how."""

    exit_code = 2


class ConfigError(MegallmError):
    """A configuration mistake: an unknown key, a value out of range, an inconsistent layout."""


class DataError(MegallmError):
    """A corpus problem: a missing or damaged shard, a tokenizer that does not match."""


class CheckpointError(MegallmError):
    """A checkpoint that cannot be used as asked (missing, damaged, another model or layout)."""


class DivergenceError(MegallmError):
    """Training met a non-finite loss, gradient norm or weights and stopped (nan_guard.policy);
    the newest checkpoint is intact. Exit code 3, apart from set-up mistakes."""

    exit_code = 3


class ConversionError(MegallmError):
    """A conversion (export, import, reshard) that cannot be done as asked."""


class VerificationError(ConversionError):
    """A converted model that does not compute megallm's logits (exit code 1, as a failed check)."""

    exit_code = 1


class UsageError(MegallmError):
    """A command line that cannot be run as given."""


class WorldError(MegallmError):
    """A rank of a local world of processes failed; the message is that rank's error."""
