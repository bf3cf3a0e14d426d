"""User-facing errors: one line that names the thing at fault and the fix; the CLIs exit 2 on them."""


class CysegError(Exception):
    """An error caused by the user's input (file, option, model), reported as one line."""


class DatasetError(CysegError):
    """A dataset folder, image or mask that cannot be used as it is."""


class ModelFileError(CysegError):
    """A model file that is missing, unreadable or not a cyseg model."""


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """The exception's message on a single line (at most `limit` characters), else its type's name."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if limit is None else text[:limit]
