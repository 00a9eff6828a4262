"""The committed gRPC stubs are exactly what `make proto` generates from proto/pipeline.proto."""
import subprocess
import sys
from pathlib import Path

import google.protobuf

REPO_ROOT = Path(__file__).resolve().parents[1]
STUBS = ("pipeline_pb2.py", "pipeline_pb2_grpc.py")


def test_generated_stubs_are_fresh(tmp_path):
    (tmp_path / "proto").mkdir()
    (tmp_path / "proto" / "pipeline.proto").write_bytes(
        (REPO_ROOT / "proto" / "pipeline.proto").read_bytes())
    subprocess.run(  # the Makefile's `proto` target, run in a copy of the tree
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
         "--grpc_python_out=.", "proto/pipeline.proto"],
        cwd=tmp_path, check=True, capture_output=True, timeout=60)
    for name in STUBS:
        fresh = (tmp_path / "proto" / name).read_bytes()
        committed = (REPO_ROOT / "proto" / name).read_bytes()
        assert fresh == committed, f"proto/{name} is stale or edited: run `make proto`"


def test_stubs_load_with_the_installed_protobuf():
    """One protobuf major for the project: the stubs' runtime version check must pass."""
    from proto import pipeline_pb2

    major = int(google.protobuf.__version__.split(".")[0])
    assert major == 6, "pyproject pins protobuf 6 (tritonclient wants < 7)"
    assert pipeline_pb2.StepRequest.DESCRIPTOR.full_name == "duet.pipeline.v1.StepRequest"
