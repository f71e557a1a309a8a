"""`compress build RUN_DIR --ray ADDRESS`: the engine build runs as a Ray task on the node that owns the device.

The task asks for the target's custom resource (`resources:` in targets/*.yaml, e.g. `jetson_orin_nano: 1`),
so Ray places it on a node started with `ray start --resources='{"jetson_orin_nano": 1}'`. Files move through
a shared store, a folder every node sees at the same path or an fsspec URL (s3://, gs://, ...), content-addressed
like the stage cache: each file is `<store>/sha256/<digest>`, written once under a temporary name, moved into place,
and checked against its digest when read. The driver
puts what the build reads (the QDQ .onnx and build.json, the FP32 model, the run's report/run.json/recipe, the
model and eval data files the recipe names); the worker rebuilds a run folder from them, runs `build()`, puts
the engine folder's files (model.engine, manifest.json, build-report.json, ...) and returns their digests; the
driver checks them and renames the folder into RUN_DIR/engines/<target>/ only when every file arrived intact.
A cluster where no node has the resource is an error naming it before anything is submitted.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .cache import file_digest as _sha256
from .errors import CompressError, InputError, first_line
from .fsutil import atomic_dir


# ---------------------------------------------------------------- the content-addressed store
class Store:
    """`<root>/sha256/<digest>`: on a folder every node mounts at the same path, or behind any fsspec URL
    (s3://bucket/prefix with s3fs, gs:// with gcsfs, az:// with adlfs, ftp://, ...). A file is written under
    a temporary name and moved into place once complete, and checked against its digest when read."""

    def __init__(self, location: str):
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        if "://" in location:
            scheme = location.split("://", 1)[0]
            self.location = location
            self.shown = re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", location)   # no password in messages
            try:
                self.fs, root = fsspec.core.url_to_fs(location)
            except (ImportError, ValueError) as exc:
                raise InputError(f"--store {self.shown}: no fsspec driver for {scheme}:// ({first_line(exc)[:200]})",
                                 where="--store", hint="Install the driver on the driver and on every node: s3fs "
                                 "for s3://, gcsfs for gs://, adlfs for az://; or pass a shared folder.") from exc
        else:
            self.fs, root = LocalFileSystem(), str(Path(location).expanduser().resolve())
            self.location = self.shown = root
        self.root = root.rstrip("/")
        try:
            self.fs.makedirs(f"{self.root}/sha256", exist_ok=True)
        except Exception as exc:   # a driver's own errors (permissions, no such bucket, unreachable host)
            raise InputError(f"cannot use {self.shown} as the shared store: {first_line(exc)[:300]}",
                             where="--store") from exc

    def entry(self, digest: str) -> str:
        self.fs.invalidate_cache(f"{self.root}/sha256")   # another node may have written since this one listed it
        return f"{self.root}/sha256/{digest}"

    def put(self, path: Path) -> str:
        """Store a file under its sha256 (once; an existing entry is reused) and return the digest."""
        digest = _sha256(path)
        entry = self.entry(digest)
        if not self.fs.exists(entry):
            tmp = f"{self.root}/sha256/.{digest}.tmp-{os.uname().nodename}-{os.getpid()}"
            self.fs.put_file(str(path), tmp)
            self.fs.mv(tmp, entry)
        return digest

    def get(self, digest: str, dest: Path) -> None:
        """Copy a stored file to `dest`, refusing one whose content does not match its digest."""
        entry = self.entry(digest)
        if not self.fs.exists(entry):
            raise InputError(f"the shared store {self.shown} has no file {digest}",
                             hint="The store must be the same for every node (a shared folder or URL).")
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(entry, str(dest))
        if _sha256(dest) != digest:
            dest.unlink()
            raise InputError(f"{entry} does not match its digest: the shared store is corrupt", where=str(dest))


# ---------------------------------------------------------------- what the build reads
def _bundle(run_dir: Path) -> tuple[dict[str, str], dict[str, str], str]:
    """{relative path in the run folder: absolute path here} for the run's files, {'<recipe field>/<name>':
    absolute path here} for every file the recipe names (model, data, labels, factories, metric functions,
    target files, at any depth), and the recipe's text with those files renamed to '<recipe field>/<name>'
    (relative: the node resolves them against the folder it copies them to)."""
    import yaml

    from .build import _fp32_source, locate
    from .recipe import map_recipe_files

    run_dir, onnx_path, _ = locate(run_dir)
    if run_dir is None:
        raise InputError("--ray needs the run folder (its recipe and eval data), not a bare .onnx")
    files = {name: run_dir / name for name in ("report.json", "run.json")}
    for path in [onnx_path, onnx_path.with_name("build.json"), *onnx_path.parent.glob(onnx_path.name + ".data"),
                 _fp32_source(run_dir, onnx_path)]:
        if path is not None and path.is_file():
            files[str(path.relative_to(run_dir))] = path
    base = Path(json.loads((run_dir / "run.json").read_text())["base_dir"])
    named = {}

    def ship(field: str, value: str) -> str:
        path = (base / Path(value).expanduser()).resolve()
        if path.is_dir():
            named.update({f"{field}/{path.name}/{p.relative_to(path)}": p for p in path.rglob("*") if p.is_file()})
        elif path.is_file():
            named[f"{field}/{path.name}"] = path
        else:
            return value
        return f"{field}/{path.name}"   # the same file name: loaders go by the suffix

    recipe = map_recipe_files(yaml.safe_load((run_dir / "recipe.yaml").read_text()), ship)
    return ({k: str(v) for k, v in files.items()}, {k: str(v) for k, v in named.items()},
            yaml.safe_dump(recipe, sort_keys=False))


def _put_all(root: Store, files: dict[str, str]) -> dict[str, str]:
    return {name: root.put(Path(path)) for name, path in files.items() if Path(path).is_file()}


# ---------------------------------------------------------------- on the device's node
def on_device(store: str, run_files: dict[str, str], named: dict[str, str], recipe_text: str, target: str,
              runs: int, build_fn=None) -> dict:
    """The Ray task: rebuild the run folder from the store, build, store the engine folder's files."""
    import ray

    root = Store(store)
    work = Path(tempfile.mkdtemp(prefix="compress-build-"))
    try:
        run_dir, data = work / "run", work / "data"
        for name, digest in run_files.items():
            root.get(digest, run_dir / name)
        for field, digest in named.items():   # files the recipe names, where its rewritten paths point
            root.get(digest, data / field)
        (run_dir / "recipe.yaml").write_text(recipe_text)
        info = json.loads((run_dir / "run.json").read_text())
        (run_dir / "run.json").write_text(json.dumps({**info, "base_dir": str(data)}))
        if build_fn is None:
            from .build import build as build_fn
        result = build_fn(run_dir, target_name=target, runs=runs, log=print)
        folder = Path(result["folder"])
        result["files"] = {p.name: root.put(p) for p in sorted(folder.iterdir()) if p.is_file()}
        result["ray_node"] = ray.get_runtime_context().get_node_id()
        result["folder"] = None
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- the driver
def dispatch_build(run_dir: Path, *, target_name: str | None, address: str, store: str, runs: int = 200,
                   connect_timeout: float = 10.0, log=print, build_fn=None) -> dict:
    """Build RUN_DIR's engine on the Ray node that has the target's resource; the engine folder comes back
    into RUN_DIR/engines/<target>/ (atomically). `build_fn` replaces `compress.build.build` on the worker:
    tests only (the CLI never passes it)."""
    from .build import build_target, locate
    from .executors import connect, missing_resources

    run_dir = Path(run_dir)
    _, _, plan = locate(run_dir)
    target = build_target(target_name, plan)
    if not target.resources:
        raise InputError(f"target {target.name} names no Ray resource (`resources:` in its YAML), so there is no "
                         "device node to send the build to", where="--target",
                         hint="Add e.g. resources: {my_gpu_box: 1} and start that node with ray start --resources.")
    root = Store(store)
    run_files, named, recipe_text = _bundle(run_dir)
    ray = connect(address, timeout=connect_timeout)
    why = missing_resources(ray, {"num_cpus": 1, "resources": target.resources})
    if why is not None:
        raise InputError(f"cannot build for {target.name} on the Ray cluster at {address}: {why}",
                         hint="Start the device's node with ray start --resources='"
                              + json.dumps(target.resources) + "', or build on the device itself.")
    log(f"sending the build for {target.name} to the node with {json.dumps(target.resources)} via {root.shown}")
    task = ray.remote(on_device).options(num_cpus=1, resources=dict(target.resources), max_retries=0)
    name = target_name or plan["target"]   # as given: the worker resolves it the same way
    ref = task.remote(root.location, _put_all(root, run_files), _put_all(root, named), recipe_text, name, runs, build_fn)
    try:
        result = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, CompressError):   # the build's own clear error on the device (e.g. no TensorRT)
            cause = exc.cause
            raise type(cause)(cause.message, where=f"on the Ray node for {target.name}: {cause.where or 'build'}",
                              hint=cause.hint) from None
        raise
    folder = run_dir / "engines" / target.name
    folder.parent.mkdir(exist_ok=True)
    with atomic_dir(folder) as tmp:
        for file, digest in result["files"].items():
            root.get(digest, tmp / file)
    result["folder"] = str(folder)
    return result
