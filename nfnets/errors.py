"""The errors a user can cause, as opposed to bugs.

Every exception a user's mistake raises (a config typo, a missing data set, a
busy or unwritable work directory, a checkpoint of another model, bad images)
derives from `UserError`. Its message says what is wrong and what to do, in
one to three lines, so the command lines print it without a traceback
(`--traceback` shows one); any other exception is a bug and keeps its
traceback.
"""


class UserError(Exception):
  """A mistake in what was asked for; the message says what to do."""


class InputError(UserError, ValueError):
  """Images, batch sizes or splits a function cannot use."""
