"""The one exception type a user can cause.

Entry points catch ``PetsegError`` and print its message on one line with exit code 2, so a user
mistake (bad config, missing file) never ends in a stack trace. Internal bugs stay ordinary exceptions.
"""

USAGE_ERROR = 2  # the exit code of a user mistake, in every command


class PetsegError(Exception):
    """An error caused by user input (config, files, data); its message is shown as is."""


class TrainingDiverged(PetsegError):
    """The loss or the weights became NaN/inf: a property of one run's settings (a sweep goes on).

    ``best_metric`` is the best validation score the run reached before (-inf if none).
    """

    def __init__(self, message: str, best_metric: float = float("-inf")) -> None:
        super().__init__(message)
        self.best_metric = best_metric
