"""User-facing errors.

Every problem caused by the user's input (a bad model spec, a missing data set, an index out of
range) raises :class:`SaesteerError` with one line naming the problem and the fix. The CLI prints
that line and exits with code 2, without a traceback.
"""


class SaesteerError(Exception):
    """A problem with the user's input or environment, with a one-line message naming the fix."""

    exit_code = 2
