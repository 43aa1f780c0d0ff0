"""The one exception type for errors a user can cause and fix."""


class UserError(ValueError):
  """A bad config value, missing or wrong file, corrupt image, unknown label...

  The message names the thing and the fix. launch.py prints it without a traceback.
  """


class Stopped(Exception):
  """A run stopped on request (SIGTERM, Ctrl-C) after saving what it needs to resume.

  launch.py prints the message as one line and exits with 128 + the signal's number.
  """

  def __init__(self, message, signum):
    super().__init__(message)
    self.signum = signum
