"""One error hierarchy. The CLI maps each class to an exit code; the API raises them as they are."""
from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_INVALID_INPUT = 2
EXIT_GATE_FAILED = 3


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class CompressError(Exception):
    """Base of every error `compress` raises on purpose."""

    exit_code = EXIT_UNEXPECTED

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text = f"{text.rstrip('.')}. {self.hint}"
        return text


class InputError(CompressError):
    """The user's input (recipe, model, data, paths) is wrong: exit 2."""

    exit_code = EXIT_INVALID_INPUT


class RecipeError(InputError):
    """The recipe file or its content is invalid."""


class ModelError(InputError):
    """The model could not be loaded or does not fit the recipe."""


class DataError(InputError):
    """The calibration/eval data is missing, empty or malformed."""


class ChainError(InputError):
    """A stage cannot take the artifact the previous stage produces."""


class StageError(CompressError):
    """A stage failed while running (a backend raised, a parity check failed): exit 1."""


class GateFailure(CompressError):
    """Raised by the CLI layer only; the API reports gate results in the RunResult."""

    exit_code = EXIT_GATE_FAILED
