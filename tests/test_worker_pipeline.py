"""organize-files: products into a dated layout, idempotently, even after a crash."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from absurd import pipeline
from absurd.context import PermanentFailure, RunControl, TaskContext, TaskStopped


def context(params: dict, attempt: int = 1) -> TaskContext:
    return TaskContext(queue="q", task_id=1, run_id=1, task_name="organize-files",
                       params=params, attempt=attempt, max_attempts=3,
                       dependency_results={}, control=RunControl())


def make_ms(folder: Path, name: str) -> Path:
    """A Measurement Set is a folder of tables."""
    ms = folder / name
    (ms / "ANTENNA").mkdir(parents=True)
    (ms / "table.dat").write_bytes(b"visibilities")
    (ms / "ANTENNA" / "table.dat").write_bytes(b"antennas")
    return ms


@pytest.fixture
def products(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    files = [
        make_ms(incoming, "2025-10-05T11:32:00.ms"),
        incoming / "2025-10-05T11:32:00-image.fits",
        incoming / "bandpass_2025-10-04.bcal",
    ]
    files[1].write_bytes(b"SIMPLE")
    files[2].write_bytes(b"cal")
    return incoming, tmp_path / "products", files


def test_moves_products_into_the_dated_layout(products):
    incoming, root, files = products
    params = {"files": [str(f) for f in files], "dest_root": str(root)}

    result = pipeline.organize_files(params, context(params))

    assert [item["destination"] for item in result["organized"]] == [
        str(root / "2025-10-05" / "ms" / "2025-10-05T11:32:00.ms"),
        str(root / "2025-10-05" / "images" / "2025-10-05T11:32:00-image.fits"),
        str(root / "2025-10-04" / "caltables" / "bandpass_2025-10-04.bcal"),
    ]
    assert {item["action"] for item in result["organized"]} == {"moved"}
    assert not any(f.exists() for f in files)
    ms = root / "2025-10-05" / "ms" / "2025-10-05T11:32:00.ms"
    assert (ms / "ANTENNA" / "table.dat").read_bytes() == b"antennas"


def test_running_again_changes_nothing(products):
    incoming, root, files = products
    params = {"files": [str(f) for f in files], "dest_root": str(root)}
    first = pipeline.organize_files(params, context(params))
    layout = sorted(str(p) for p in root.rglob("*"))

    again = pipeline.organize_files(params, context(params, attempt=2))

    assert {item["action"] for item in again["organized"]} == {"already in place"}
    assert [i["destination"] for i in again["organized"]] == [
        i["destination"] for i in first["organized"]]
    assert sorted(str(p) for p in root.rglob("*")) == layout


def test_symlinks_leave_the_products_where_they_are(products):
    incoming, root, files = products
    params = {"files": [str(f) for f in files], "dest_root": str(root),
              "action": "symlink", "date": "2025-12-31"}

    result = pipeline.organize_files(params, context(params))
    again = pipeline.organize_files(params, context(params))

    link = root / "2025-12-31" / "images" / files[1].name
    assert link.is_symlink() and link.resolve() == files[1]
    assert all(f.exists() for f in files)
    assert {item["action"] for item in result["organized"]} == {"linked"}
    assert {item["action"] for item in again["organized"]} == {"already in place"}


def test_a_different_file_in_the_way_fails_for_good(products):
    incoming, root, files = products
    blocking = root / "2025-10-04" / "caltables" / files[2].name
    blocking.parent.mkdir(parents=True)
    blocking.write_bytes(b"another calibration")
    params = {"files": [str(files[2])], "dest_root": str(root)}

    with pytest.raises(PermanentFailure, match="exists already"):
        pipeline.organize_files(params, context(params))
    assert files[2].read_bytes() == b"cal"
    assert blocking.read_bytes() == b"another calibration"


@pytest.mark.parametrize("params, complaint", [
    ({"files": [], "dest_root": "/x"}, "non-empty list"),
    ({"files": ["a.ms"], "dest_root": "/x"}, "absolute paths"),
    ({"files": ["/a.ms"], "dest_root": "x"}, "dest_root"),
    ({"files": ["/a.ms"], "dest_root": "/x", "action": "copy"}, "move or symlink"),
    ({"files": ["/a.ms"], "dest_root": "/x", "date": "05/10/2025"}, "YYYY-MM-DD"),
    ({"files": ["/nowhere/2025-01-01.ms"], "dest_root": "/x"}, "does not exist"),
])
def test_bad_params_fail_for_good(params, complaint):
    with pytest.raises(PermanentFailure, match=complaint):
        pipeline.organize_files(params, context(params))


def test_a_stopped_run_stops_between_files(products):
    incoming, root, files = products
    params = {"files": [str(f) for f in files], "dest_root": str(root)}
    ctx = context(params)
    ctx.control.stop("cancelled")

    with pytest.raises(TaskStopped):
        pipeline.organize_files(params, ctx)
    assert all(f.exists() for f in files)


def test_a_crash_after_the_copy_was_placed_is_finished_on_retry(products):
    """Across filesystems: the copy is in place and marked, the source not yet gone."""
    incoming, root, files = products
    source = files[0]
    dest = root / "2025-10-05" / "ms" / source.name
    dest.parent.mkdir(parents=True)
    shutil.copytree(source, dest)
    dest.with_name(dest.name + pipeline.MOVED_SUFFIX).write_text(str(source))
    shutil.rmtree(source / "ANTENNA")  # the crash came while removing the source
    params = {"files": [str(source)], "dest_root": str(root)}

    result = pipeline.organize_files(params, context(params, attempt=2))

    assert result["organized"][0]["action"] == "moved"
    assert not source.exists()
    assert (dest / "ANTENNA" / "table.dat").read_bytes() == b"antennas"
    assert sorted(p.name for p in dest.parent.iterdir()) == [source.name]


def test_a_crash_during_the_copy_starts_over_on_retry(products):
    incoming, root, files = products
    source = files[0]
    dest = root / "2025-10-05" / "ms" / source.name
    partial = dest.with_name(dest.name + pipeline.PARTIAL_SUFFIX)
    partial.mkdir(parents=True)
    (partial / "table.dat").write_bytes(b"vis")  # half a copy
    params = {"files": [str(source)], "dest_root": str(root)}

    pipeline.organize_files(params, context(params, attempt=2))

    assert (dest / "table.dat").read_bytes() == b"visibilities"
    assert sorted(p.name for p in dest.parent.iterdir()) == [source.name]


def test_moves_across_filesystems(products):
    incoming, root, files = products
    if not os.path.isdir("/dev/shm"):
        pytest.skip("needs a second filesystem at /dev/shm")
    other = Path(tempfile.mkdtemp(dir="/dev/shm"))
    if os.stat(other).st_dev == os.stat(incoming).st_dev:
        other.rmdir()
        pytest.skip("needs a second filesystem at /dev/shm")
    try:
        params = {"files": [str(files[0])], "dest_root": str(other)}
        result = pipeline.organize_files(params, context(params))
        dest = Path(result["organized"][0]["destination"])
        assert (dest / "ANTENNA" / "table.dat").read_bytes() == b"antennas"
        assert not files[0].exists()
        assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]
    finally:
        shutil.rmtree(other)
