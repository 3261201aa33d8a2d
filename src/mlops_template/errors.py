"""The one exception type for problems a user can fix (bad params, bad data, bad input)."""


class UserError(Exception):
    """A problem in the user's input: the CLI prints its message on one line and exits 2."""
