"""User-facing errors: one line that names the thing at fault and the fix; the CLIs exit 2 on them."""


class CysegError(Exception):
    """An error caused by the user's input (file, option, model), reported as one line."""


class DatasetError(CysegError):
    """A dataset folder, image or mask that cannot be used as it is."""


class ModelFileError(CysegError):
    """A model file that is missing, unreadable or not a cyseg model."""
