"""Errors compactlm reports to users as one line (the CLI prints `error: <message>`), and the small
helpers that keep such messages to one line."""


class CompactlmError(Exception):
    """Base class: the message names the file and the problem."""


class ConfigError(CompactlmError):
    pass


class CheckpointError(CompactlmError):
    pass


def short_list(items: list[str], limit: int = 6) -> str:
    """'a, b, c and 4 more': long lists of names stay on one line."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries raise multi-line dumps), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def shown_key(key: str) -> str:
    """A key as a message shows it: quoted when it holds a line break or another unprintable character
    (YAML and overrides allow any key), so the message stays one line."""
    return key if key.isprintable() else repr(key)
