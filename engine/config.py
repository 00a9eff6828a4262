"""A checkpoint's config.json and generation_config.json, read and checked once."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError

# rope_scaling keys that are the rope type, across transformers versions.
_ROPE_TYPE_KEYS = ("rope_type", "type")


def read_json(path: Path) -> dict:
    """A JSON object from a checkpoint file, or CheckpointError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def normalize_rope(raw: dict) -> dict:
    """One rope dict (rope_type, rope_theta, scaling keys) from either config spelling.

    transformers 4 writes `rope_theta` + `rope_scaling` (with `type` or `rope_type`);
    transformers 5 writes `rope_parameters` holding everything.
    """
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    rope_type = next((params.pop(k) for k in _ROPE_TYPE_KEYS if k in params), "default")
    params.pop("type", None)
    params["rope_type"] = rope_type
    params.setdefault("rope_theta", float(raw.get("rope_theta", 10000.0)))
    if rope_type in ("llama3", "yarn", "longrope"):
        params.setdefault(
            "original_max_position_embeddings", raw.get("max_position_embeddings", 2048)
        )
    return params


@dataclass(frozen=True)
class ModelConfig:
    """The fields every architecture reads; the rest stays in `raw` (see `get`)."""

    architecture: str
    model_type: str
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    max_position_embeddings: int
    rope: dict  # rope_type, rope_theta and the type's scaling keys (see normalize_rope)
    torch_dtype: str | None
    raw: dict = field(repr=False)

    def get(self, name: str, default: Any = None) -> Any:
        """An architecture-specific field of config.json (e.g. DeepSeek's kv_lora_rank)."""
        return self.raw.get(name, default)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelConfig":
        path = Path(model_dir) / "config.json"
        return cls.from_dict(read_json(path), source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json") -> "ModelConfig":
        def need(name: str, kind: type = int):
            if raw.get(name) is None:
                raise CheckpointError(f"{source}: field {name!r} is missing")
            value = raw[name]
            positive_int = isinstance(value, int) and not isinstance(value, bool) and value > 0
            if kind is int and not positive_int:
                raise CheckpointError(
                    f"{source}: field {name!r} must be a positive integer, got {value!r}"
                )
            return value

        archs = raw.get("architectures")
        if not archs or not isinstance(archs, list):
            raise CheckpointError(f"{source}: field 'architectures' is missing")
        heads = need("num_attention_heads")
        hidden = need("hidden_size")
        return cls(
            architecture=str(archs[0]),
            model_type=str(raw.get("model_type", "")),
            num_hidden_layers=need("num_hidden_layers"),
            hidden_size=hidden,
            intermediate_size=int(raw.get("intermediate_size") or 4 * hidden),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            vocab_size=need("vocab_size"),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            max_position_embeddings=int(raw.get("max_position_embeddings") or 2048),
            rope=normalize_rope(raw),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
            raw=raw,
        )


# generation_config.json keys that become defaults for unset request fields (as vLLM does).
SAMPLING_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


@dataclass(frozen=True)
class GenerationDefaults:
    """generation_config.json: the checkpoint's special tokens and suggested sampling."""

    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    sampling: dict  # request field -> default, only from generation_config.json
    max_new_tokens: int | None
    raw: dict = field(repr=False)

    @property
    def temperature(self) -> float | None:
        return self.sampling.get("temperature")

    @property
    def top_p(self) -> float | None:
        return self.sampling.get("top_p")

    @property
    def top_k(self) -> int | None:
        return self.sampling.get("top_k")

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "GenerationDefaults":
        """Read generation_config.json; without it, the ids in config.json and no sampling."""
        model_dir = Path(model_dir)
        path = model_dir / "generation_config.json"
        sampled = path.exists()
        source = path if sampled else model_dir / "config.json"
        raw = read_json(source)
        eos = raw.get("eos_token_id")
        try:
            eos_ids = tuple(int(i) for i in (eos if isinstance(eos, list) else
                                             () if eos is None else (eos,)))
        except (TypeError, ValueError):
            raise CheckpointError(f"{source}: bad eos_token_id {eos!r}") from None
        return cls(
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
            sampling={k: raw[k] for k in SAMPLING_DEFAULT_KEYS if k in raw} if sampled else {},
            max_new_tokens=raw.get("max_new_tokens") if sampled else None,
            raw=raw,
        )
