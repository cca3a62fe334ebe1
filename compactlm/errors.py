"""Errors compactlm reports to users as one line (the CLI prints `error: <message>`)."""


class CompactlmError(Exception):
    """Base class: the message names the file and the problem."""


class ConfigError(CompactlmError):
    pass


class CheckpointError(CompactlmError):
    pass
