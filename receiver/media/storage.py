"""Where kept files live: a folder beside the database (the default), or an S3 bucket.

Files are named by job: ``{job_id}.mp4`` and ``{job_id}-cover.png``. A file arrives as a
whole temporary file (see ``fetch``) and is put in place in one step, so a reader sees
either nothing or the complete file, never a part.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from abc import ABC, abstractmethod
from pathlib import Path

from receiver.config import ArchiveConfig
from receiver.media.content import VIDEO, extension
from receiver.media.fetch import Fetched

STAGING = ".partial"  # temporary files being downloaded, inside the media folder
DIR_MODE = 0o700  # the service's own: like the database, nobody else reads the videos


class StorageError(Exception):
    """The storage refused or could not be reached; the message says which and why."""


def file_name(job_id: str, kind: str, content_type: str) -> str:
    suffix = "" if kind == VIDEO else "-cover"
    return f"{job_id}{suffix}{extension(content_type)}"


class Storage(ABC):
    name: str
    remote = False  # True: readers are redirected to the file (``redirect``), not served it

    @abstractmethod
    async def prepare(self) -> None:
        """Create what is missing (the folder); raise StorageError if it cannot be used."""

    @abstractmethod
    async def put(self, fetched: Fetched, location: str) -> None:
        """Move the whole temporary file into place under ``location``; it is gone after."""

    @abstractmethod
    async def delete(self, location: str) -> None:
        """Remove a kept file; one that is already gone is no error."""

    @abstractmethod
    async def check(self) -> str:
        """Prove the storage takes files (write and remove a probe); say where it is."""

    async def redirect(self, location: str, seconds: int) -> str:
        """A short-lived URL that serves the file itself, for remote storage."""
        raise StorageError(f"{self.name} storage serves its files itself")

    def path(self, location: str) -> Path:
        raise StorageError(f"{self.name} storage has no local files")


class LocalStorage(Storage):
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, location: str) -> Path:
        return self.root / location

    async def prepare(self) -> None:
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> None:
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            (self.root / STAGING).mkdir(mode=DIR_MODE, exist_ok=True)
        except OSError as exc:
            problem = f"media folder {self.root} cannot be created: {exc.strerror}"
            raise StorageError(problem) from None

    async def put(self, fetched: Fetched, location: str) -> None:
        await asyncio.to_thread(self._put, fetched.path, self.root / location)

    @staticmethod
    def _put(source: Path, target: Path) -> None:
        os.replace(source, target)
        # The rename itself reaches the disk before the file's record is written.
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def delete(self, location: str) -> None:
        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                (self.root / location).unlink()

        await asyncio.to_thread(remove)

    async def check(self) -> str:
        return await asyncio.to_thread(self._check)

    def _check(self) -> str:
        self._prepare()
        probe = self.root / STAGING / ".vidhook-check"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            problem = f"media folder {self.root} is not writable: {exc.strerror}"
            raise StorageError(problem) from None
        free = shutil.disk_usage(self.root).free
        return f"folder {self.root} (writable, {free / 1024**3:.1f} GiB free)"


def clean_staging(root: Path) -> int:
    """Remove temporary files a killed process left: their downloads start afresh."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for leftover in (root / STAGING).iterdir():
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
    return removed


def build_storage(config: ArchiveConfig) -> Storage | None:
    if config.store == "local":
        return LocalStorage(config.path)
    if config.store == "s3":
        from receiver.media.s3 import S3Storage

        assert config.s3 is not None
        return S3Storage(config.s3)
    return None
