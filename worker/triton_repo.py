"""Files Triton needs: the tail's model repository (rendered from worker/triton_model/), and
for a managed server the tritonserver binary and a Python-backend directory from the
nvidia-pytriton wheel."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from string import Template

from worker.config import WorkerConfig

TEMPLATE_DIR = Path(__file__).parent / "triton_model"
# WorkerConfig fields the model needs to load the tail; they become config.pbtxt parameters.
MODEL_PARAMETERS = ("model_dir", "layer_start", "dtype", "device", "fp8", "kv_cache_bytes",
                    "kv_block_size", "cuda_graph_max_batch", "torch_threads", "idle_timeout_s",
                    "stream_kv_share", "stream_max_seqs", "orphan_grace_s")


def write_model_repo(config: WorkerConfig, repo_dir: str | Path) -> Path:
    """Render the tail model into `repo_dir/<triton_model_name>/`; returns the model's dir."""
    model_dir = Path(repo_dir) / config.triton_model_name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TEMPLATE_DIR / "1" / "model.py", model_dir / "1" / "model.py")
    params = ",\n".join(
        f'  {{ key: "{name}" value: {{ string_value: "{_escape(getattr(config, name))}" }} }}'
        for name in MODEL_PARAMETERS
    )
    text = Template((TEMPLATE_DIR / "config.pbtxt").read_text()).substitute(
        model_name=config.triton_model_name, parameters=f"parameters [\n{params}\n]"
    )
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # e.g. files unpacked without metadata
        return ""


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"')


class TritonNotInstalled(RuntimeError):
    """The nvidia-pytriton wheel (which bundles tritonserver) is missing, incomplete, or
    cannot work in this environment."""


# nvidia-pytriton up to this version bundles a Python backend (Triton <= 2.51) whose stub
# passes no tensor data with numpy 2: inputs arrive as garbage (a BYTES input kills the stub),
# outputs arrive empty. Seen on the H200 host (numpy 2.5.2) and reproduced on the CPU host by
# installing numpy 2 there (bench/gpu/pipeline.md).
NUMPY2_BROKEN_UP_TO = (0, 7)


def check_numpy(pytriton_version: str, numpy_version: str) -> None:
    """Raise if the bundled stub cannot exchange tensors with this numpy."""
    def major_minor(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split(".")[:2] if x.isdigit())

    bundled = major_minor(pytriton_version) if pytriton_version else (0, 0)  # unknown: old
    if int(numpy_version.split(".")[0]) >= 2 and bundled <= NUMPY2_BROKEN_UP_TO:
        raise TritonNotInstalled(
            f"the tritonserver of nvidia-pytriton {pytriton_version or '(version unknown)'} "
            f"cannot pass tensors to its Python-backend stub with numpy {numpy_version}: "
            "install numpy<2 in the worker's environment (pip install 'duet[triton]' pins "
            "it), or set executor = \"local\"")


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel keeps the server binary, the Python backend, and their libraries."""

    binary: Path
    backend_dir: Path  # holds libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub built for this Python version
    libs_dir: Path  # the wheel's vendored shared libraries

    @classmethod
    def find(cls) -> "TritonInstall":
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise TritonNotInstalled(
                "executor 'triton' without triton_url needs the nvidia-pytriton wheel "
                "(pip install 'duet[triton]'), or set triton_url to an existing Triton"
            )
        root = Path(spec.submodule_search_locations[0]) / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        install = cls(
            binary=root / "bin" / "tritonserver",
            backend_dir=root / "backends" / "python",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
            libs_dir=root.parent.parent / "nvidia_pytriton.libs",
        )
        for path in (install.binary, install.backend_dir, install.stub):
            if not path.exists():
                raise TritonNotInstalled(f"nvidia-pytriton is incomplete: {path} is missing")
        check_numpy(_version("nvidia-pytriton"), _version("numpy"))  # the stub's numpy too
        return install

    def assemble_backends(self, dest: str | Path) -> Path:
        """A --backend-directory whose python/ holds the backend and this Python's stub."""
        python_dir = Path(dest) / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        links = {f.name: f for f in self.backend_dir.iterdir() if f.is_file()}
        links[self.stub.name] = self.stub
        for name, target in links.items():
            link = python_dir / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
        return Path(dest)

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        """The server's env: this virtualenv first on PATH (the stub imports duet and torch
        from it), and the libraries the stub and server link on LD_LIBRARY_PATH."""
        env = dict(base)
        env["PATH"] = f"{Path(sys.executable).parent}:{base.get('PATH', '/usr/bin:/bin')}"
        lib_dirs = [sysconfig.get_config_var("LIBDIR") or "", str(self.libs_dir),
                    base.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(d for d in lib_dirs if d)
        return env
