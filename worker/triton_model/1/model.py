"""Triton Python-backend entry point: the duet worker's TailRunner behind Triton.

The Python environment that runs this stub must have duet installed (the managed server puts
the worker's virtualenv first on PATH; in a container, pip-install duet there).
"""
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from runtime.gc_freeze import freeze_loaded_objects
from worker.config import WorkerConfig
from worker.executor import tail_loader
from worker.triton_protocol import (INPUT_HIDDEN, INPUT_OP, INPUT_STEP, INPUT_STREAM,
                                     OUTPUT_RESULT, handle, parse_op)


class TritonPythonModel:
    """Loads the tail once, then answers one pipeline call per request."""

    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        values = {name: p["string_value"] for name, p in params.items()}
        self.tail = tail_loader(WorkerConfig.from_dict(values, environ={}))()
        freeze_loaded_objects()  # out of the full GC passes that would stall a step

    def execute(self, requests):
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        def text(name):
            return pb_utils.get_input_tensor_by_name(request, name).as_numpy()[0]

        hidden = pb_utils.get_input_tensor_by_name(request, INPUT_HIDDEN)
        if hidden is not None:  # a numpy view of the request's buffer: the tail copies it to
            # pinned memory with numpy on this thread, as it does the local executor's bytes
            # (a torch tensor here took torch's copy_ instead; bench/gpu/triton_relay.md)
            hidden = hidden.as_numpy()
        try:
            result = handle(self.tail, parse_op(text(INPUT_OP).decode()),
                            text(INPUT_STREAM).decode(), text(INPUT_STEP), hidden)
        except Exception as e:  # answer with the reason; the worker turns it into statuses
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}"))
        out = pb_utils.Tensor(OUTPUT_RESULT, np.array([result], dtype=np.object_))
        return pb_utils.InferenceResponse(output_tensors=[out])

    def finalize(self):
        self.tail = None
