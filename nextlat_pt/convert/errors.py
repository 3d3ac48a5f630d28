"""The one error type of the converters: a directory or model they cannot handle, and why."""

from __future__ import annotations


class ConvertError(ValueError):
    """A wrong or incomplete input, or an architecture the converter does not support.

    The message is one line that names the problem and what to do about it.
    """
