"""One error hierarchy. The CLI maps each class to an exit code; the API raises them as they are."""
from __future__ import annotations

from contextlib import contextmanager

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


@contextmanager
def backend_call(what: str, *, where: str | None = None, hint: str | None = None,
                 settings_errors: tuple[type[BaseException], ...] = (), settings_where: str | None = None,
                 rejected: str = "the library rejected the settings"):
    """Run a library call (NNCF, ONNX Runtime, OpenVINO, torch.export...). Its exception becomes one
    `StageError` ("<what>: <first line>") at the stage's YAML path, raised `from` the library's own
    exception so `--debug` shows the frame it came from. Exceptions in `settings_errors` mean the
    library refused the user's settings: an `InputError` (exit 2), "<rejected>: <first line>", at
    `settings_where`. Our own errors and interrupts pass through untouched."""
    try:
        yield
    except CompressError:
        raise
    except settings_errors as exc:
        raise InputError(f"{rejected}: {first_line(exc)[:300]}", where=settings_where or where, hint=hint) from exc
    except Exception as exc:
        text, kind = first_line(exc), type(exc).__name__
        # a specific exception type says something ("KeyError: 'x'"); RuntimeError says nothing
        detail = text if text == kind or kind in ("Exception", "RuntimeError") else f"{kind}: {text}"
        raise StageError(f"{what}: {detail[:400]}", where=where, hint=hint) from exc
