"""A tritonserver child process: started, waited on until ready, restarted if it dies,
stopped with the worker, and its Python-backend shared memory cleaned up."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Callable

import tritonclient.grpc.aio as triton_grpc

from runtime.children import die_with_parent, free_port
from worker.triton_repo import TritonInstall

log = logging.getLogger(__name__)
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)  # then 5 s between tries
MAX_FAILED_RESTARTS = 3  # in a row; then give up, and the worker exits 1 (its supervisor acts)


class TritonStartError(RuntimeError):
    """tritonserver exited or did not get ready in time; the message ends with its log."""


class ManagedTriton:
    """One tritonserver on 127.0.0.1 serving `model_name` from `repo_dir`."""

    def __init__(self, install: TritonInstall, repo_dir: Path, run_dir: Path, model_name: str,
                 *, grpc_port: int = 0, http_port: int = 0, start_timeout_s: float = 120.0,
                 server_args: tuple[str, ...] = (),
                 on_restart: Callable[[], None] | None = None):
        self.install, self.repo_dir, self.run_dir = install, repo_dir, run_dir
        self.model_name, self.start_timeout_s = model_name, start_timeout_s
        self.grpc_port, self.http_port = grpc_port or free_port(), http_port or free_port()
        self.server_args = server_args
        self.on_restart = on_restart
        self.log_path = run_dir / "tritonserver.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.shm_regions: set[str] = set()
        self.supervisor: asyncio.Task | None = None
        self.stopping = False
        self.ready = asyncio.Event()
        self.gave_up = asyncio.Event()  # set when restarts keep failing; `why` says why
        self.why = ""

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    async def start(self) -> None:
        """Start and wait until the model is ready; then watch it in the background. A server
        that dies while starting gets one more try (its gRPC poller was seen aborting half a
        second in, once in many starts); one not ready in time does not."""
        try:
            await self._spawn_until_ready()
        except TritonStartError:
            if self.proc is None or self.proc.returncode is None:
                raise
            log.warning("tritonserver died while starting; starting it once more")
            await self._spawn_until_ready()
        self.supervisor = asyncio.create_task(self._supervise(), name="triton-supervisor")

    async def _spawn_until_ready(self) -> None:
        backends = self.install.assemble_backends(self.run_dir / "backends")
        args = [
            str(self.install.binary), f"--model-repository={self.repo_dir}",
            f"--backend-directory={backends}", "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}", "--http-address=127.0.0.1",
            f"--http-port={self.http_port}", "--allow-metrics=false",
            "--model-control-mode=none", "--strict-readiness=true", "--exit-timeout-secs=5",
            # The tail moves its tensors itself: no 256 MiB pinned staging pool on GPU hosts.
            "--pinned-memory-pool-byte-size=0", *self.server_args,
        ]
        with open(self.log_path, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *args, stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                env=self.install.environment(dict(os.environ)), preexec_fn=die_with_parent,
                start_new_session=True,  # its own process group: the stubs can be reaped with it
            )
        log.info("tritonserver pid %d starting on %s (log %s)", self.proc.pid, self.url,
                 self.log_path)
        await self._wait_ready()
        self.shm_regions |= self._current_shm_regions()
        self.ready.set()

    async def _wait_ready(self) -> None:
        started_s = time.monotonic()
        client = triton_grpc.InferenceServerClient(self.url)
        try:
            while time.monotonic() - started_s < self.start_timeout_s:
                if self.proc.returncode is not None:
                    raise TritonStartError(f"tritonserver exited with status "
                                           f"{self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if await client.is_model_ready(self.model_name):
                        log.info("tritonserver ready in %.1f s", time.monotonic() - started_s)
                        return
                except Exception:  # not listening yet
                    pass
                await asyncio.sleep(0.2)
            await self._terminate()
            raise TritonStartError(f"tritonserver not ready after {self.start_timeout_s:g} s:\n"
                                   f"{self.log_tail()}")
        finally:
            await client.close()

    async def _supervise(self) -> None:
        """Restart the server whenever it dies until stop() is called."""
        tries = 0
        while not self.stopping:
            status = await self.proc.wait()
            if self.stopping:
                return
            self.ready.clear()
            self._kill_group()
            self._clean_shm()
            delay = RESTART_BACKOFF_S[min(tries, len(RESTART_BACKOFF_S) - 1)]
            log.error("tritonserver died (status %s); restarting in %.1f s", status, delay)
            await asyncio.sleep(delay)
            try:
                await self._spawn_until_ready()
                tries = 0
                if self.on_restart:
                    self.on_restart()
            except TritonStartError as e:
                tries += 1
                log.error("tritonserver restart failed: %s", e)
                if tries >= MAX_FAILED_RESTARTS:
                    self.why = f"tritonserver could not be restarted {tries} times in a row: {e}"
                    self.gave_up.set()
                    return

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; remove the shared memory it leaves."""
        self.stopping = True
        if self.supervisor:
            self.supervisor.cancel()
        self.shm_regions |= self._current_shm_regions()
        await self._terminate()
        self._clean_shm()

    async def _terminate(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._kill_group()

    def _kill_group(self) -> None:
        """SIGKILL what is left of the server's process group: a server that died (or was
        SIGKILLed) leaves its Python-backend stubs running as orphans, each holding a copy
        of the tail's weights."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # nothing left

    def _current_shm_regions(self) -> set[str]:
        """Regions named on the command lines of the server's children (the stubs)."""
        if self.proc is None:
            return set()
        regions = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != self.proc.pid:
                    continue
                argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue  # the process went away while we looked
            regions |= {a.decode() for a in argv if a.startswith(SHM_PREFIX.encode())}
        return regions

    def _clean_shm(self) -> None:
        for name in self.shm_regions:
            (SHM_DIR / name).unlink(missing_ok=True)
        self.shm_regions.clear()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
