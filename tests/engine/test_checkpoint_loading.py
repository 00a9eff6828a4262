"""A stage reads only its own tensors, from only the files holding them; the other load paths."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors import safe_open as real_safe_open
from safetensors.torch import load_file, save_file

import engine.checkpoint
from engine.batch import SeqChunk, StepBatch
from engine.stage import Stage

KV = 2**20


@pytest.fixture
def reads(monkeypatch):
    """Records every file the loader opens and every tensor it reads from each."""
    log: dict[str, list[str]] = {}

    class Spy:
        def __init__(self, path, *args, **kwargs):
            self.name = path.rsplit("/", 1)[-1]
            log.setdefault(self.name, [])
            self.inner = real_safe_open(path, *args, **kwargs)

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def get_tensor(self, name):
            log[self.name].append(name)
            return self.inner.get_tensor(name)

    monkeypatch.setattr(engine.checkpoint, "safe_open", Spy)
    return log


def index_of(ckpt) -> dict[str, str]:
    return json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]


@pytest.mark.parametrize("start, end", [(0, 1), (1, 3), (3, 4), (0, 4)])
def test_a_layer_range_opens_only_its_shards_and_reads_only_its_tensors(ckpt, reads, start, end):
    stage = Stage.load(ckpt, start, end, kv_cache_bytes=KV)
    wanted = {
        n for n in index_of(ckpt)
        if any(n.startswith(f"model.layers.{i}.") for i in range(start, end))
        or (start == 0 and n.startswith("model.embed_tokens."))
        or (end == 4 and (n.startswith("model.norm.") or n.startswith("lm_head.")))
    }
    read = [n for names in reads.values() for n in names]
    assert sorted(read) == sorted(wanted)  # each once, nothing else
    assert set(reads) == {index_of(ckpt)[n] for n in wanted}
    assert stage.load_seconds > 0


def test_layers_past_num_hidden_layers_are_never_read(ckpt, reads, tmp_path):
    """Multi-token-prediction layers sit at index >= num_hidden_layers in DeepSeek-V3 files."""
    work = tmp_path / "ckpt"
    shutil.copytree(ckpt, work)
    index = json.loads((work / "model.safetensors.index.json").read_text())
    mtp = {"model.layers.4.eh_proj.weight": torch.ones(64, 128, dtype=torch.bfloat16),
           "model.layers.4.enorm.weight": torch.ones(64, dtype=torch.bfloat16)}
    save_file(mtp, str(work / "model-mtp.safetensors"))
    index["weight_map"].update({n: "model-mtp.safetensors" for n in mtp})
    (work / "model.safetensors.index.json").write_text(json.dumps(index))
    Stage.load(work, 0, 4, kv_cache_bytes=KV)
    assert "model-mtp.safetensors" not in reads


def test_a_single_file_checkpoint_loads_the_same_weights(ckpt, tmp_path):
    work = tmp_path / "single"
    shutil.copytree(ckpt, work, ignore=shutil.ignore_patterns("model*.safetensors*"))
    merged = {}
    for shard in sorted(set(index_of(ckpt).values())):
        merged.update(load_file(str(ckpt / shard)))
    save_file(merged, str(work / "model.safetensors"))
    a = Stage.load(ckpt, 1, 4, kv_cache_bytes=KV).model.state_dict()
    b = Stage.load(work, 1, 4, kv_cache_bytes=KV).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tied_embeddings_feed_the_lm_head_of_any_last_stage(tiny_checkpoint, tmp_path, prompt):
    from transformers import AutoModelForCausalLM

    work = tmp_path / "tied"
    shutil.copytree(tiny_checkpoint("llama"), work)
    config = json.loads((work / "config.json").read_text())
    (work / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    index = json.loads((work / "model.safetensors.index.json").read_text())
    shard = work / index["weight_map"].pop("lm_head.weight")
    tensors = load_file(str(shard))
    del tensors["lm_head.weight"]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    (work / "model.safetensors.index.json").write_text(json.dumps(index))

    whole = Stage.load(work, 0, 4, kv_cache_bytes=KV).model
    assert whole.lm_head.weight is whole.model.embed_tokens.weight  # one tensor, not two
    head = Stage.load(work, 0, 2, kv_cache_bytes=KV)
    tail = Stage.load(work, 2, 4, kv_cache_bytes=KV)
    torch.testing.assert_close(tail.model.lm_head.weight, head.model.model.embed_tokens.weight)

    ref = AutoModelForCausalLM.from_pretrained(work, dtype=torch.float32).eval()
    ids = prompt(8)
    batch = StepBatch((SeqChunk("a", 0, 8),))
    got = tail.compute_logits(tail.forward(batch, head.forward(batch, torch.tensor(ids))))
    with torch.no_grad():
        torch.testing.assert_close(got, ref(torch.tensor([ids])).logits[0], atol=1e-4, rtol=0)


def test_dummy_format_needs_only_config_json_and_is_seeded(ckpt, tmp_path, reads):
    work = tmp_path / "config_only"
    work.mkdir()
    shutil.copy(ckpt / "config.json", work / "config.json")
    load = lambda a, b, seed=0: Stage.load(work, a, b, load_format="dummy", seed=seed, kv_cache_bytes=KV)
    whole, again, other = load(0, 4), load(0, 4), load(0, 4, seed=1)
    assert not reads  # no weight file touched
    w = "model.layers.1.self_attn.o_proj.weight"  # in every architecture
    sd = lambda s: s.model.state_dict()
    assert torch.equal(sd(whole)[w], sd(again)[w]) and not torch.equal(sd(whole)[w], sd(other)[w])
    assert sd(whole)[w].std() > 0
    # a layer's values depend on its name only, so two halves make the whole model
    head, tail = load(0, 2), load(2, 4)
    batch, ids = StepBatch((SeqChunk("a", 0, 6),)), torch.arange(6) * 100
    split = tail.compute_logits(tail.forward(batch, head.forward(batch, ids)))
    torch.testing.assert_close(split, whole.compute_logits(whole.forward(batch, ids)))


def test_loading_logs_its_progress_and_the_time_taken(ckpt, caplog):
    with caplog.at_level(logging.INFO, logger="duet.engine.load"):
        Stage.load(ckpt, 0, 2, kv_cache_bytes=KV)
    lines = [r.getMessage() for r in caplog.records if r.name == "duet.engine.load"]
    assert any("100%" in line for line in lines)  # not a terminal: log lines, not a bar
    done = next(line for line in lines if "done in" in line)
    assert " s " in done and "layers [0, 2)" in done  # the weights
    assert "ready in" in lines[-1] and "KV cache for" in lines[-1]  # the whole stage
