"""The one exception type for errors a user can cause and fix."""


class UserError(ValueError):
  """A bad config value, missing or wrong file, corrupt image, unknown label...

  The message names the thing and the fix. launch.py prints it without a traceback.
  """
