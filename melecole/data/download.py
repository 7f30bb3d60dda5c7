"""Downloading with a checksum, and unpacking archives without letting members escape.

Both steps work in a temporary sibling and rename at the end, so an interrupted or refused
download or extraction never leaves a file or folder that looks complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from melecole.errors import MelecoleError
from melecole.io import atomic_output

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def sha256sum(path: str | Path) -> str:
    """Hex SHA-256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str | Path, sha256: str | None, timeout: float = 60) -> Path:
    """Streams ``url`` to ``dest``, verifying its SHA-256 digest on the way.

    The data goes to a temporary file beside ``dest``, renamed to ``dest`` only when the
    transfer finished and the digest matched.

    Args:
        url: http(s) or file URL.
        dest: the file to create (its folder is created if needed).
        sha256: expected hex digest; ``None`` skips the check and logs the actual digest so
            it can be pinned in the configuration.
        timeout: seconds to wait for the connection and for each read.

    Returns:
        ``dest`` as a Path.

    Raises:
        MelecoleError: HTTP or network failure (naming the URL), or a digest mismatch
            (naming URL, expected and actual digest); ``dest`` is not created then.
    """
    dest = Path(dest)
    digest = hashlib.sha256()
    with atomic_output(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as error:
            raise MelecoleError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise MelecoleError(f"download of {url} failed: {reason}") from None
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.strip().lower():
            raise MelecoleError(f"download of {url}: sha256 mismatch, expected {sha256}, got {actual}")
    if sha256 is None:
        logger.info("downloaded %s to %s, sha256 %s (not verified: no checksum given)", url, dest, actual)
    return dest


def safe_extract(archive: str | Path, target: str | Path) -> list[Path]:
    """Unpacks a .zip or .tar(.gz/.bz2/.xz)/.tgz archive into ``target``, refusing escapes.

    Every member is checked before anything is written: absolute names, ``..`` that climbs
    out of ``target``, symlinks or hard links pointing outside, and device or fifo members
    are refused. The archive is unpacked into a temporary sibling folder that is renamed to
    ``target`` only when complete.

    Args:
        archive: the archive; its format is recognised from its content, not its name.
        target: folder to create; it must not exist or be empty.

    Returns:
        The extracted regular files (paths under ``target``), sorted.

    Raises:
        MelecoleError: unknown format, corrupt archive, unsafe member (named), or a
            non-empty ``target``.
    """
    archive, target = Path(archive), Path(os.path.abspath(target))
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise MelecoleError(f"cannot extract {archive}: {target} already exists and is not an empty folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, staging)
        elif _is_tar(archive):
            _extract_tar(archive, staging)
        else:
            raise MelecoleError(f"{archive}: not a zip or tar archive")
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return sorted(path for path in target.rglob("*") if path.is_file() and not path.is_symlink())


def _is_tar(archive: Path) -> bool:
    try:
        return tarfile.is_tarfile(archive)
    except OSError:
        return False


def _inside(name: str, root: Path) -> bool:
    """Whether the archive member ``name`` stays inside ``root`` once resolved lexically."""
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        return False
    resolved = os.path.normpath(os.path.join(root, name.replace("\\", "/")))
    return resolved == str(root) or resolved.startswith(str(root) + os.sep)


def _extract_zip(archive: Path, root: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as handle:
            members = handle.infolist()
            for member in members:
                if not _inside(member.filename, root):
                    raise MelecoleError(f"{archive}: refusing member '{member.filename}' outside the target folder")
            # zipfile writes a symlink member as a small regular file holding the link text,
            # so zip links cannot point anywhere.
            handle.extractall(root)
    except (zipfile.BadZipFile, OSError) as error:
        raise MelecoleError(f"{archive}: cannot unpack ({error})") from None


def _extract_tar(archive: Path, root: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as handle:
            members = handle.getmembers()
            for member in members:
                _check_tar_member(archive, member, root)
            if hasattr(tarfile, "data_filter"):
                # The standard library's own guard rechecks links against the files on disk.
                handle.extractall(root, members=members, filter="data")
            else:  # pragma: no cover - Python before 3.10.12
                handle.extractall(root, members=members)
    except (tarfile.TarError, OSError) as error:
        raise MelecoleError(f"{archive}: cannot unpack ({error})") from None


def _check_tar_member(archive: Path, member: tarfile.TarInfo, root: Path) -> None:
    refuse = f"{archive}: refusing member '{member.name}'"
    if not _inside(member.name, root):
        raise MelecoleError(f"{refuse} outside the target folder")
    if member.issym():
        # A symlink's target is relative to the folder that holds the link.
        parent = str(PurePosixPath(member.name).parent)
        if member.linkname.startswith("/") or not _inside(os.path.join(parent, member.linkname), root):
            raise MelecoleError(f"{refuse}: symlink to '{member.linkname}' points outside the target folder")
    elif member.islnk():
        # A hard link's target is named relative to the archive root.
        if not _inside(member.linkname, root):
            raise MelecoleError(f"{refuse}: hard link to '{member.linkname}' points outside the target folder")
    elif not (member.isfile() or member.isdir()):
        raise MelecoleError(f"{refuse}: only files, folders and links are allowed, not devices or fifos")
