"""The DSA-110 continuum-imaging pipeline as seen from the queue: its stages, and
organize-files, the one stage implemented here.

The eight science stages are the pipeline's own functions (see the routing in
absurd.registry); a worker without the pipeline installed reports them as not loaded
and does not claim them. organize_files() puts the products of an observation into a
dated layout::

    <dest_root>/<YYYY-MM-DD>/<kind>/<name>

where kind follows from the name's suffix (ms, uvh5, images, caltables, catalogs,
other). It is idempotent: running it again after it finished, or after a crash part
way, ends in the same layout without touching what is already in place.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import shutil
from pathlib import Path
from typing import Any

from absurd.context import PermanentFailure, TaskContext

STAGES = (
    "catalog-setup",
    "convert-uvh5-to-ms",
    "calibration-solve",
    "calibration-apply",
    "imaging",
    "validation",
    "crossmatch",
    "photometry",
    "organize-files",
)

KINDS = {
    ".ms": "ms",
    ".uvh5": "uvh5",
    ".hdf5": "uvh5",
    ".fits": "images",
    ".fit": "images",
    ".image": "images",
    ".cal": "caltables",
    ".bcal": "caltables",
    ".gcal": "caltables",
    ".kcal": "caltables",
    ".bpcal": "caltables",
    ".csv": "catalogs",
    ".ecsv": "catalogs",
    ".vot": "catalogs",
}
ACTIONS = ("move", "symlink")
ISO_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")
#: Beside a product being moved across filesystems: the copy in progress, and the
#: mark that the copy is complete and the source may go.
PARTIAL_SUFFIX = ".absurd-partial"
MOVED_SUFFIX = ".absurd-moved"


def kind_of(path: Path) -> str:
    return KINDS.get(path.suffix.lower(), "other")


def date_of(path: Path, given: str | None) -> str | None:
    """The observation date: given, else an ISO date in the name, else the mtime's."""
    if given is not None:
        return given
    found = ISO_DATE.search(path.name)
    if found:
        return found.group(1)
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return dt.datetime.fromtimestamp(mtime, dt.timezone.utc).date().isoformat()


def _check_params(params: dict[str, Any]) -> tuple[list[Path], Path, str, str | None]:
    files = params.get("files")
    if not isinstance(files, list) or not files or not all(
            isinstance(f, str) and f for f in files):
        raise PermanentFailure("params.files must be a non-empty list of paths")
    dest_root = params.get("dest_root")
    if not isinstance(dest_root, str) or not os.path.isabs(dest_root):
        raise PermanentFailure("params.dest_root must be an absolute path")
    action = params.get("action", "move")
    if action not in ACTIONS:
        raise PermanentFailure(f"params.action = {action!r}; use move or symlink")
    date = params.get("date")
    if date is not None:
        try:
            dt.date.fromisoformat(str(date))
        except ValueError:
            raise PermanentFailure(f"params.date = {date!r}; use YYYY-MM-DD") from None
    paths = [Path(f) for f in files]
    relative = [str(p) for p in paths if not p.is_absolute()]
    if relative:
        raise PermanentFailure(f"params.files must be absolute paths: {relative}")
    return paths, Path(dest_root), action, date


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _copy(source: Path, target: Path) -> None:
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target, follow_symlinks=False)


def _find_placed(dest_root: Path, source: Path) -> Path | None:
    """Where an earlier run put source, when the source is gone and its date unknown."""
    found = list(dest_root.glob(f"*/{kind_of(source)}/{source.name}"))
    return found[0] if len(found) == 1 else None


def move(source: Path, dest: Path) -> str:
    """Move source to dest idempotently; return what was done."""
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    moved_mark = dest.with_name(dest.name + MOVED_SUFFIX)
    if moved_mark.exists():
        if os.path.lexists(dest):  # a crash after the copy was placed: finish it
            _remove(source)
            moved_mark.unlink()
            return "moved"
        moved_mark.unlink()  # a crash before the copy was placed: start over
    if os.path.lexists(partial):
        _remove(partial)

    if not os.path.lexists(source):
        if os.path.lexists(dest):
            return "already in place"
        raise PermanentFailure(f"{source} does not exist and was not organized before")
    if os.path.lexists(dest):
        raise PermanentFailure(
            f"{dest} exists already and is not {source}: move one of them away or "
            "choose another dest_root")

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, dest)
        return "moved"
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    # Across filesystems: copy beside the destination, mark the copy complete, put
    # it in place, and only then remove the source.
    _copy(source, partial)
    moved_mark.write_text(str(source))
    os.rename(partial, dest)
    _remove(source)
    moved_mark.unlink()
    return "moved"


def symlink(source: Path, dest: Path) -> str:
    """Link dest to source idempotently; return what was done."""
    if dest.is_symlink() and Path(os.readlink(dest)) == source:
        return "already in place"
    if os.path.lexists(dest):
        raise PermanentFailure(
            f"{dest} exists already and is not a link to {source}: move it away or "
            "choose another dest_root")
    if not os.path.lexists(source):
        raise PermanentFailure(f"{source} does not exist")
    dest.parent.mkdir(parents=True, exist_ok=True)
    temporary = dest.with_name(dest.name + PARTIAL_SUFFIX)
    if os.path.lexists(temporary):
        temporary.unlink()
    os.symlink(source, temporary)
    os.rename(temporary, dest)
    return "linked"


def organize_files(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Move or link an observation's products into <dest_root>/<date>/<kind>/.

    Args:
        params: files (absolute paths), dest_root (absolute), action (move or
            symlink; move by default), date (YYYY-MM-DD; by default the date in
            each name, else its modification date in UTC).

    Returns:
        {"organized": [{"source", "destination", "action"}, ...]}
    """
    paths, dest_root, action, date = _check_params(params)
    organized = []
    for number, source in enumerate(paths, start=1):
        ctx.heartbeat()
        day = date_of(source, date)
        if day is None:
            placed = _find_placed(dest_root, source)
            if placed is None:
                raise PermanentFailure(
                    f"{source} does not exist and was not organized before")
            dest, done = placed, "already in place"
        else:
            dest = dest_root / day / kind_of(source) / source.name
            done = move(source, dest) if action == "move" else symlink(source, dest)
        ctx.log.info("organized source=%s destination=%s action=%s", source, dest,
                     done.replace(" ", "_"))
        organized.append({"source": str(source), "destination": str(dest),
                          "action": done})
        ctx.set_progress(f"{number}/{len(paths)} files organized")
    return {"organized": organized}
