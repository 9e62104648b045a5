"""User-facing errors: the CLI prints their message (no traceback) and exits with code 2."""


class GeomedError(Exception):
    """An error the user can fix: bad data, bad config, a refused operation. The message says what and how."""


class ConfigError(GeomedError):
    """A recipe or override is invalid."""


class DataError(GeomedError):
    """Input files are missing, unreadable or inconsistent."""


class TrainingError(GeomedError):
    """Training could not go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class OutputError(GeomedError):
    """An output path is refused: it is an input, holds one, or is a folder the toolkit did not make (or made for
    another command)."""


class RunStopped(Exception):
    """A run stopped by a signal (a scheduler's SIGTERM, Ctrl-C) before it finished. Not a user error: the CLI prints
    the message, which says what was kept and how to go on, and exits 128 + the signal's number (143, 130)."""

    def __init__(self, signal_name: str, message: str):
        super().__init__(message)
        self.signal = signal_name
