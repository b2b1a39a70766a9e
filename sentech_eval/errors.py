"""The exception tree of sentech-eval.

    SentechEvalError            a user-facing problem: one clear sentence, no traceback
    ├── ConfigError             bad or out-of-range configuration, refused before any request
    ├── DatasetError            a dataset that breaks the input schema (names file, column, row)
    ├── BackendError            a backend that cannot start (missing key, model file, library)
    │   └── AuthenticationError the server rejected the API key (401/403): the run stops
    ├── ResultsError            results that cannot be read or combined
    ├── CacheError              the response cache file cannot be used (not SQLite, damaged, newer schema)
    ├── RunDirError             a run dir that cannot be used (a file, not writable, another run holds it)
    └── TrackerError            an experiment tracker (MLflow, W&B) that refuses an export or cannot be reached

Request failures are *not* exceptions: they become rows with ``status="error"``.
"""


class SentechEvalError(Exception):
    """Base class: the message is shown to the user as one sentence, without a traceback."""


class ConfigError(SentechEvalError):
    """Configuration is invalid; raised before any request is sent."""


class DatasetError(SentechEvalError):
    """A dataset file breaks the input schema."""


class BackendError(SentechEvalError):
    """A backend cannot be set up (no key, missing model, missing optional dependency)."""


class AuthenticationError(BackendError):
    """The server refused the API key; every further request would fail too."""


class ResultsError(SentechEvalError):
    """A results file or directory cannot be read."""


class CacheError(SentechEvalError):
    """The response cache cannot be opened, read or written (damaged file, foreign file, newer format)."""


class RunDirError(SentechEvalError):
    """The run dir cannot be used: it is a file, not writable, full, or another run holds its lock."""


class TrackerError(SentechEvalError):
    """An experiment tracker (MLflow, Weights & Biases) refused the export or could not be reached."""
