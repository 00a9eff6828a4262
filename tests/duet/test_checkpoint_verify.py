"""`duet checkpoint verify`: the SHA-256 manifest it writes, and a flipped byte it catches."""
import shutil
import subprocess
import sys

import pytest

from engine.manifest import MANIFEST_NAME, Manifest, compute_manifest, first_difference
from engine.tiny_model import write_tiny_model


def duet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "duet.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def model(tmp_path):
    out = write_tiny_model("qwen2", tmp_path / "tiny-qwen2", num_layers=2)
    (out / "sub").mkdir()
    (out / "sub" / "extra.bin").write_bytes(b"\0" * 5000)  # files in sub-folders count too
    return out


def flip_byte(path, offset: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_write_then_verify_reports_files_and_throughput(model):
    wrote = duet("checkpoint", "verify", str(model), "--write", "--threads", "3")
    assert wrote.returncode == 0, wrote.stderr
    manifest = Manifest.read(model)
    paths = [path for path, _ in manifest.entries]
    assert "sub/extra.bin" in paths and "config.json" in paths and MANIFEST_NAME not in paths
    assert manifest.digest() in wrote.stdout
    if shutil.which("sha256sum"):  # the manifest is coreutils' format
        check = subprocess.run(["sha256sum", "--check", "--quiet", MANIFEST_NAME], cwd=model,
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    ok = duet("checkpoint", "verify", str(model))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: ") and "MiB/s" in ok.stdout
    assert f"{len(paths)} files" in ok.stdout
    assert "sha256" in ok.stderr  # the progress bar


def test_a_flipped_byte_is_named_with_exit_2(model):
    assert duet("checkpoint", "verify", str(model), "--write").returncode == 0
    weights = sorted(model.glob("*.safetensors"))[0]
    flip_byte(weights)
    bad = duet("checkpoint", "verify", str(model))
    assert bad.returncode == 2
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("duet: error:") and f"first: {weights.name}: sha256" in last


def test_missing_manifest_and_missing_file_are_reported(model):
    none = duet("checkpoint", "verify", str(model))
    assert none.returncode == 2 and "no SHA256SUMS" in none.stderr
    assert duet("checkpoint", "verify", str(model), "--write").returncode == 0
    (model / "sub" / "extra.bin").unlink()
    gone = duet("checkpoint", "verify", str(model))
    assert gone.returncode == 2 and "sub/extra.bin: missing" in gone.stderr


def test_parallel_hashes_equal_serial_and_first_difference_is_sorted(model):
    one = compute_manifest(model, threads=1)
    many = compute_manifest(model, threads=4)
    assert one == many and one.digest() == many.digest()
    mine = one.as_dict()
    theirs = dict(mine, **{"sub/extra.bin": "0" * 64, "config.json": "1" * 64})
    assert first_difference(mine, theirs) == "config.json"
    assert first_difference(mine, dict(mine)) is None
