"""Architecture name (config.json `architectures[0]`) -> StageModel class."""
from __future__ import annotations

import importlib

from engine.errors import CheckpointError
from engine.models.base import StageModel

# name -> "module:class"; imported on first use so a dense stage never imports the MoE code.
ARCHITECTURES = {
    "LlamaForCausalLM": "engine.models.llama:LlamaForCausalLM",
    "Qwen2ForCausalLM": "engine.models.llama:Qwen2ForCausalLM",
    "DeepseekV2ForCausalLM": "engine.models.deepseek:DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM": "engine.models.deepseek:DeepseekV3ForCausalLM",
}


def model_class(architecture: str) -> type[StageModel]:
    """The StageModel subclass of an architecture; CheckpointError lists the supported ones."""
    target = ARCHITECTURES.get(architecture)
    if target is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise CheckpointError(
            f"config.json: architecture {architecture!r} is not supported (supported: {supported})"
        )
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)
