"""Errors the user can fix: main prints their message on one line and exits non-zero."""


class ConfigError(ValueError):
  """A bad config value, missing data or path; the message names the fix."""


def flags_parser(usage: str):
  """An absl `flags_parser` that reports flag and `--config.` override mistakes (a misspelt key,
  a bad value, a missing flag) as one `error:` line plus `usage`, exit code 2, no traceback."""
  import sys

  from absl import flags

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
      message = str(e).replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
      if len(message) > 1 and message[0] == message[-1] == "'":
        message = message[1:-1]
      print(f"error: {message}\nUsage: {usage}", file=sys.stderr)
      sys.exit(2)

  return parse
