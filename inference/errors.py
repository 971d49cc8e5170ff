"""The exception every refusal of an input raises: its message is the ERROR line's text."""


class InputError(ValueError):
    """An input that cannot be segmented; the message names the file and the reason."""
