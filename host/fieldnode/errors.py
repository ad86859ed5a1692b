"""The one error type the CLI catches: its message is a single line naming the problem and the fix."""


class FieldnodeError(Exception):
    exit_code = 1


class UsageError(FieldnodeError):
    exit_code = 2
