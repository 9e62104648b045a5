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
