"""The run folder: `runs/<name>-<timestamp>/` appears with recipe.yaml and run.json already inside;
run.json tracks the run's and each stage's status (running, done, failed, interrupted) so a killed
run can be resumed in place."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import yaml

from . import cache
from .errors import InputError
from .fsutil import atomic_dir, atomic_write_json, atomic_write_text
from .recipe import Recipe

SCHEMA_VERSION = 2


class RunFolder:
    def __init__(self, recipe: Recipe, stage_names: list[str], info: dict):
        self.recipe = recipe
        self.info = info               # base_dir, out_dir, resumable: what `resume` needs
        self.stages = [{"name": n, "status": "pending"} for n in stage_names]
        self.started = datetime.now().isoformat(timespec="seconds")
        self.path: Path | None = None

    def create(self, out_dir: Path) -> Path:
        """A new folder under `out_dir` that appears with its recipe.yaml and run.json already inside."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            for n in range(1000):
                path = out_dir / (f"{self.recipe.name}-{stamp}" + (f"-{n}" if n else ""))
                if path.exists():
                    continue
                with atomic_dir(path) as tmp:
                    self.path = tmp
                    self._write_files()
                self.path = path
                return path
        except OSError as exc:
            raise InputError(f"cannot create the run folder under {out_dir}: {exc.strerror or exc}",
                             hint="Pass a writable folder with --out.") from exc
        raise InputError(f"cannot find a free run folder name under {out_dir}")

    def reopen(self, path: Path) -> Path:
        """Continue in an existing folder (resume): leftovers of a killed process are removed first."""
        self.path = path
        cache.clean_stale_temps(path)
        self._write_files()
        return path

    def _write_files(self) -> None:
        atomic_write_text(self.path / "recipe.yaml", yaml.safe_dump(self.recipe.model_dump(mode="json"),
                                                                     sort_keys=False))
        self.status("running")

    def stage_started(self, index: int) -> None:
        self.stages[index]["status"] = "running"
        self.status("running")

    def stage_done(self, index: int) -> None:
        self.stages[index]["status"] = "done"

    def status(self, status: str, **extra) -> None:
        atomic_write_json(self.path / "run.json", {
            "schema_version": SCHEMA_VERSION, "status": status, "recipe": self.recipe.name,
            "started": self.started, "updated": datetime.now().isoformat(timespec="seconds"),
            **self.info, "stages": self.stages, **extra})

    def ended(self, exc: BaseException) -> None:
        """Record why the run stopped: `interrupted` for Ctrl-C, else `failed` with the error."""
        from .errors import CompressError

        for s in self.stages:
            if s["status"] == "running":
                s["status"] = "failed"
        message = exc.render() if isinstance(exc, CompressError) else f"{type(exc).__name__}: {exc}"
        self.status("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", error=message)
