"""The worker: layers [k, L), final norm, LM head and sampler, served to the APIs over gRPC.

Reading order: main.py (`duet worker`, `run_worker`) -> server.py (Pipeline service, error
policy) -> executor.py (`local`) / triton_executor.py (`triton`) -> tail.py (TailRunner: the
sequence table both executors run) -> wire.py (hidden checks, replies; the conversions shared
with the master are in proto/convert.py). Triton: triton_repo.py writes the model repository
from triton_model/, triton_process.py supervises tritonserver.
"""
