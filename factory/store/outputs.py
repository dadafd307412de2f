"""Where commands may write files: never inside the warehouse, never over a file unless asked.

A rejects report, an SQL result, an export or a plot written into the warehouse folder
could replace the catalog or a data file (one `--rejects wh/catalog.sqlite` once lost a
warehouse), so every path a user names for output is resolved (symlinks and `..`
followed) and refused when it lands in the warehouse folder, its data path or on its
catalog file. An existing file is replaced only with `force` (`--force`).

`write_file` does the writing: it checks again just before, writes a fresh temporary
file beside the target and then moves it into place, so a link swapped in after the
check (a symlink, or a hard link to the catalog) is itself replaced, never the file it
points to; without `force` the move refuses to replace anything that appeared meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from factory.store.lake import LakeError, Location


class OutputError(LakeError, ValueError):
    """An output path the command refuses to write; the message names the path and the fix."""


def protected(folder: Path, location: Location) -> list[Path]:
    """The warehouse folder, its local data path and its catalog file, resolved."""
    places = [folder]
    if "://" not in location.data_path:
        places.append(Path(location.data_path))
    scheme, _, target = location.catalog.partition(":")
    if scheme in ("sqlite", "duckdb"):
        places.append(Path(target))
    return [Path(os.path.realpath(p)) for p in places]


def inside(path: Path, place: Path) -> bool:
    return path == place or place in path.parents


def _refuse_inside(shown: Path, resolved: Path, places: Iterable[Path], flag: str) -> None:
    for place in places:
        if inside(resolved, place):
            raise OutputError(
                f"{flag} {shown}: that is inside the warehouse ({place}); write outside the warehouse folder"
            )


def check_file(path: str | os.PathLike, places: Iterable[Path], force: bool, flag: str = "--out") -> Path:
    """The path to write, refused when it is inside the warehouse or (without force) exists."""
    target = Path(path)
    _refuse_inside(target, Path(os.path.realpath(target)), places, flag)
    if target.is_dir():
        raise OutputError(f"{flag} {target}: that is a folder; name a file")
    if (target.exists() or target.is_symlink()) and not force:
        raise OutputError(f"{flag} {target}: the file exists; pass --force to replace it")
    return target


def check_folder(
    path: str | os.PathLike, files: Iterable[str], places: Iterable[Path], force: bool, flag: str = "--out"
) -> Path:
    """A folder to write `files` into, refused when any lands inside the warehouse or (without
    force) already exists."""
    folder = Path(path)
    places = list(places)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {folder}: that is a file; name a folder")
    for name in [".", *files]:
        _refuse_inside(folder, Path(os.path.realpath(folder / name)), places, flag)
    existing = sorted(name for name in files if (folder / name).exists() or (folder / name).is_symlink())
    if existing and not force:
        raise OutputError(
            f"{flag} {folder}: {', '.join(existing)} already there; pass --force to replace "
            "or choose another folder"
        )
    return folder


def write_file(
    path: str | os.PathLike,
    write: Callable[[Path], object],
    places: Iterable[Path],
    force: bool,
    flag: str = "--out",
) -> Path:
    """Write a user-named output through `write(temporary_path)`, then move it into place.

    The target's folder is created if missing. The temporary file is made exclusively
    (mkstemp) beside the target, with the target's suffix (writers pick the format by it).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    check_file(target, places, force, flag)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        if force:
            os.replace(temporary, target)  # replaces a link itself, never what it points to
        else:
            try:
                os.link(temporary, target)  # fails if anything appeared there since the check
            except FileExistsError as exc:
                raise OutputError(f"{flag} {target}: the file exists; pass --force to replace it") from exc
            except OSError:  # a file system without hard links: check once more, then move
                check_file(target, places, force, flag)
                os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    return target
