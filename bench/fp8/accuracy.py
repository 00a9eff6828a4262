"""Each layer's output, native vs dequantized, on the same input (bench_fp8.py's accuracy part).

A native run records every layer's input and output, the router's picks and the experts'
(x, weights, ids) -> out; the dequantized run is fed those inputs, so each layer (and the
experts, on the same routing) is compared on exactly what the other mode saw.
"""
from __future__ import annotations

from engine.batch import SeqChunk, StepBatch

from bench.fp8.measure import hidden_states, rel


def accuracy_inputs() -> dict:
    """Named cases, each a list of steps (chunks, hidden): a 2,000-token prompt; 1 decode (the
    few-token expert path); 64 decodes."""
    decode_seqs = [f"a{i}" for i in range(64)]
    return {
        "prefill_2000": [((SeqChunk("acc", 0, 2000),), 20)],
        "decode_1": [((SeqChunk("one", 0, 16),), 23), ((SeqChunk("one", 16, 1),), 24)],
        "decode_64": [(tuple(SeqChunk(s, 0, 16) for s in decode_seqs), 21),
                      (tuple(SeqChunk(s, 16, 1) for s in decode_seqs), 22)],
    }


def capture_layers(stage, cases: dict, feed: dict | None = None) -> dict:
    """case -> per step -> layer -> (input, output) on the CPU; with `feed`, each layer gets
    that capture's input instead of its predecessor's output (the same input for both modes)."""
    got = {}
    for name, steps in cases.items():
        got[name] = []
        for n, (chunks, seed) in enumerate(steps):
            batch = StepBatch(chunks)
            inputs = None if feed is None else feed[name][n]
            x = hidden_states(batch.num_tokens, seed, stage.config.hidden_size)
            got[name].append(_capture_step(stage, batch, x, inputs))
        for c in steps[0][0]:
            stage.release(c.seq_id)
    return got


def _capture_step(stage, batch, x, inputs):
    step, handles = {}, []
    for idx, layer in stage.model.model.layers.items():
        handles += _capture_experts(layer.mlp, idx, step, inputs)
        def pre(mod, args, idx=idx):
            if inputs is not None:
                return (inputs[idx][0].to(args[0].device),) + tuple(args[1:])
            return None

        def post(mod, args, output, idx=idx):
            step[idx] = (args[0].cpu(), output.cpu())

        handles += [layer.register_forward_pre_hook(pre), layer.register_forward_hook(post)]
    try:
        stage.forward(batch, x)
    finally:
        for h in handles:
            h.remove()
    return step


def _capture_experts(mlp, idx, step, inputs):
    """Record the router's picks and the experts' (x, weights, ids) -> out; with `inputs`, the
    experts get the captured (x, weights, ids): their error on the same routing."""
    def route(mod, args, output):
        step[f"{idx}.ids"] = output[1].sort(-1)[0].cpu()

    def pre(mod, args):
        if inputs is not None:
            return tuple(t.to(args[0].device) for t in inputs[f"{idx}.experts"][0])
        return None

    def post(mod, args, output):
        step[f"{idx}.experts"] = (tuple(a.cpu() for a in args), output.cpu())

    return [mlp.gate.register_forward_hook(route), mlp.experts.register_forward_pre_hook(pre),
            mlp.experts.register_forward_hook(post)]


def compare_layers(native: dict, dequant: dict) -> dict:
    """case -> per layer: the layer output's relative error vs dequantize's on the same input,
    the experts' on the same routing, and the share of tokens routed to other experts."""
    out = {}
    for case in native:
        a, b = native[case][-1], dequant[case][-1]
        out[case] = {idx: {"layer": rel(a[idx][1], b[idx][1]),
                           "experts_same_routing": rel(a[f"{idx}.experts"][1], b[f"{idx}.experts"][1]),
                           "tokens_rerouted": (a[f"{idx}.ids"] != b[f"{idx}.ids"]).any(-1).float().mean().item()}
                     for idx in a if idx.isdigit()}
    return out
