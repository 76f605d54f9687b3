"""Errors the user can fix: main prints their message on one line and exits non-zero."""


class ConfigError(ValueError):
  """A bad config value, missing data or path; the message names the fix."""
