"""`duet checkpoint verify DIR [--write]`: hash every file of a checkpoint, in parallel,
against (or into) its SHA256SUMS manifest; the handshake compares the manifests' digests."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "verify", help="check the folder's files against its SHA256SUMS (or --write it)",
        description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("dir", metavar="DIR", help="checkpoint folder")
    p.add_argument("--write", action="store_true",
                   help="hash the files and write DIR/SHA256SUMS instead of checking it")
    p.add_argument("--threads", type=int, default=0,
                   help="files hashed at once (default: one per CPU, at most 16)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.errors import CheckpointError
    from engine.manifest import MANIFEST_NAME, Manifest, check_manifest, checkpoint_files
    from engine.manifest import compute_manifest

    root = Path(args.dir)
    expected = None if args.write else Manifest.read(root)
    if not args.write and expected is None:
        raise CheckpointError(f"{root}: no {MANIFEST_NAME}; write one with "
                              f"`duet checkpoint verify {root} --write` on the source copy")
    files = checkpoint_files(root)
    total_bytes = sum(p.stat().st_size for p in files)
    started = time.perf_counter()
    with tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
              desc=f"sha256 {len(files)} files", file=sys.stderr, mininterval=0.5) as bar:
        actual = compute_manifest(root, files, args.threads, on_bytes=bar.update)
    seconds = time.perf_counter() - started
    rate = f"{total_bytes / 2**20 / max(seconds, 1e-9):.0f} MiB/s"
    summary = f"{len(files)} files, {total_bytes / 2**30:.2f} GiB in {seconds:.1f} s ({rate})"
    if args.write:
        path = actual.write(root)
        print(f"wrote {path}: {summary}; manifest digest {actual.digest()}")
        return 0
    problems = check_manifest(expected, actual)
    if problems:
        for line in problems[1:]:
            print(f"  {line}", file=sys.stderr)
        raise CheckpointError(f"{root}: {len(problems)} file(s) differ from {MANIFEST_NAME}, "
                              f"first: {problems[0]}")
    print(f"ok: {summary}; manifest digest {expected.digest()}")
    return 0
