"""A checkpoint folder's SHA-256 manifest: which files, which bytes (`duet checkpoint verify`).

The manifest is the folder's `SHA256SUMS` in coreutils' format (`sha256sum -c SHA256SUMS`
checks it too), one `<hex>  <relative path>` line per file, sorted by path. Its digest (the
SHA-256 of that text) is what the two hosts compare in the handshake: equal digests mean the
same bytes everywhere, without hashing 700 GB at every start. Files are hashed in parallel
(hashlib releases the GIL on large updates), largest first so the pool finishes together.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from engine.errors import CheckpointError

MANIFEST_NAME = "SHA256SUMS"
READ_CHUNK_BYTES = 8 * 2**20  # large reads: fewer syscalls, and hashlib drops the GIL
OnBytes = Callable[[int], None]  # called with each chunk's size, from the hashing threads


@dataclass(frozen=True)
class Manifest:
    """(relative path, sha256 hex) of every file, sorted by path."""

    entries: tuple[tuple[str, str], ...]

    def text(self) -> str:
        return "".join(f"{sha}  {path}\n" for path, sha in self.entries)

    def digest(self) -> str:
        return hashlib.sha256(self.text().encode()).hexdigest()

    def as_dict(self) -> dict[str, str]:
        return dict(self.entries)

    @classmethod
    def parse(cls, text: str, source: str) -> Manifest:
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            sha, sep, path = line.partition("  ")
            if not sep or len(sha) != 64 or not path or path.startswith("/") or ".." in Path(
                    path).parts:
                raise CheckpointError(f"{source}:{number}: not a '<sha256>  <relative path>' "
                                      f"line: {line[:80]!r}")
            entries.append((path.removeprefix("*"), sha.lower()))  # "*": sha256sum's binary mark
        return cls(tuple(sorted(entries)))

    @classmethod
    def read(cls, model_dir: str | Path) -> Manifest | None:
        """The folder's manifest, or None when it has none."""
        path = Path(model_dir) / MANIFEST_NAME
        if not path.is_file():
            return None
        return cls.parse(path.read_text(), str(path))

    def write(self, model_dir: str | Path) -> Path:
        """Replace the folder's manifest atomically."""
        path = Path(model_dir) / MANIFEST_NAME
        tmp = path.with_name(f".{MANIFEST_NAME}.tmp")
        tmp.write_text(self.text())
        os.replace(tmp, path)
        return path


def first_difference(mine: dict[str, str], theirs: dict[str, str]) -> str | None:
    """The first path (in sorted order) whose hash differs or that only one side has."""
    for path in sorted(mine.keys() | theirs.keys()):
        if mine.get(path) != theirs.get(path):
            return path
    return None


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """Every regular file of the folder (recursively), minus the manifest and dot-files."""
    root = Path(model_dir)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def hash_file(path: Path, on_bytes: OnBytes | None = None) -> str:
    sha = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(READ_CHUNK_BYTES):
            sha.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return sha.hexdigest()


def compute_manifest(model_dir: str | Path, files: list[Path] | None = None, threads: int = 0,
                     on_bytes: OnBytes | None = None) -> Manifest:
    """Hash `files` (default: all of the folder's) with `threads` workers (0 = one per CPU,
    at most 16: past that the disk, not the CPU, is the limit)."""
    root = Path(model_dir)
    files = checkpoint_files(root) if files is None else files
    workers = threads or min(16, os.cpu_count() or 1)
    order = sorted(files, key=lambda p: p.stat().st_size, reverse=True)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256") as pool:
        hashes = pool.map(lambda p: hash_file(p, on_bytes), order)
        entries = [(p.relative_to(root).as_posix(), sha) for p, sha in zip(order, hashes)]
    return Manifest(tuple(sorted(entries)))


def check_manifest(expected: Manifest, actual: Manifest) -> list[str]:
    """One line per difference, in path order: changed, missing or not in the manifest."""
    want, got = expected.as_dict(), actual.as_dict()
    problems = []
    for path in sorted(want.keys() | got.keys()):
        if path not in got:
            problems.append(f"{path}: missing")
        elif path not in want:
            problems.append(f"{path}: not in {MANIFEST_NAME}")
        elif want[path] != got[path]:
            problems.append(f"{path}: sha256 {got[path][:16]}… != {want[path][:16]}… "
                            f"in {MANIFEST_NAME}")
    return problems
