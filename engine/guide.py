"""Token masks from grammars (structured outputs): one xgrammar matcher per constrained
sequence, their masks filled together on the host's threads and applied to the logits on their
device. The host reads nothing back: the bitmask goes to the device ([B, V/32] int32, 1/32 of
the logits' size), and the sampled ids the sampler reads anyway advance the matchers.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from engine.config import GenerationDefaults, read_json
from engine.constraint import Constraint, ConstraintError, error_reason

log = logging.getLogger(__name__)


class Guide:
    """One sequence's matcher: which tokens may come next, advanced by the sampled ones."""

    def __init__(self, matcher, batch):
        self.matcher = matcher  # xgrammar.GrammarMatcher
        self.batch = batch  # the factory's xgrammar.BatchGrammarMatcher (its thread pool)

    def finished(self) -> bool:
        """The grammar ended and its stop token came: nothing left to constrain."""
        return self.matcher.is_terminated()

    def consume(self, token_id: int) -> bool:
        """False when the token breaks the grammar (only a NaN row's fallback can)."""
        if self.finished():
            return True
        ok = self.matcher.accept_token(token_id)
        if not ok:
            log.warning("the grammar refused token %d", token_id)
        return ok


class GuideFactory:
    """Compiles constraints against one checkpoint's tokenizer (read on the first use)."""

    def __init__(self, model_dir: str | Path, vocab_size: int):
        self.model_dir, self.vocab_size = Path(model_dir), vocab_size
        self._compiler = None  # xgrammar.GrammarCompiler, caching compiled grammars
        self._batch = None

    def compiler(self):
        if self._compiler is None:
            import xgrammar as xgr

            info = _tokenizer_info(xgr, self.model_dir, self.vocab_size)
            self._compiler = xgr.GrammarCompiler(info, cache_enabled=True)
            self._batch = xgr.BatchGrammarMatcher()
        return self._compiler

    def create(self, constraint: Constraint) -> Guide:
        """A fresh matcher; ConstraintError naming the problem when it cannot compile."""
        import xgrammar as xgr

        grammar = constraint.grammar()
        try:
            compiled = self.compiler().compile_grammar(grammar)
        except Exception as e:  # xgrammar raises RuntimeError with the reason
            raise ConstraintError(f"cannot compile the {constraint.kind} constraint: "
                                  f"{error_reason(e)}") from None
        return Guide(xgr.GrammarMatcher(compiled), self._batch)


def _tokenizer_info(xgr, model_dir: Path, vocab_size: int):
    """xgrammar's view of tokenizer.json: each id's piece (special tokens empty, so a grammar
    never produces them) and the ids a finished grammar allows: generation_config's eos ids +
    tokenizer_config's eos token, the ones the master stops on (master/bundle.py)."""
    text = (model_dir / "tokenizer.json").read_text(encoding="utf-8")
    data = json.loads(text)
    pieces = [""] * vocab_size
    for piece, i in data["model"]["vocab"].items():
        if i < vocab_size:
            pieces[i] = piece
    added = {}
    for token in data.get("added_tokens", []):
        added[token["content"]] = token["id"]
        if token["id"] < vocab_size:
            pieces[token["id"]] = "" if token.get("special") else token["content"]
    eos = list(GenerationDefaults.from_dir(model_dir).eos_token_ids)
    config_path = model_dir / "tokenizer_config.json"
    eos_text = read_json(config_path).get("eos_token") if config_path.is_file() else None
    eos_text = eos_text.get("content") if isinstance(eos_text, dict) else eos_text
    if eos_text in added:
        eos.append(added[eos_text])
    meta = xgr.TokenizerInfo._detect_metadata_from_hf(text)
    return xgr.TokenizerInfo(pieces, meta["vocab_type"], vocab_size=vocab_size,
                             stop_token_ids=list(dict.fromkeys(eos)) or None,
                             add_prefix_space=meta["add_prefix_space"])


def apply_guides(logits: torch.Tensor, guides: list[Guide | None]) -> torch.Tensor:
    """logits [B, V] -> a copy with the tokens each row's grammar forbids at -inf; rows without
    a guide (or whose grammar has finished) keep their values exactly. The raw logits stay as
    they are: logprobs are of the model's distribution."""
    rows = [i for i, g in enumerate(guides) if g is not None and not g.finished()]
    if not rows:
        return logits
    import xgrammar as xgr

    # xgrammar's apply (a C++ loop on CPU, a Triton kernel on CUDA) against unpacking the bits
    # with torch ops: 34 vs 105 ms at batch 1 and 136 vs 268 ms at batch 32 on the loaded
    # 2-core VM (a plain clone of the logits took 27 / 32 ms there).
    bitmask = torch.full((len(guides), (logits.shape[1] + 31) // 32), -1, dtype=torch.int32,
                         pin_memory=logits.is_cuda)  # [B, W]: bit j of word w: token 32w+j
    guides[rows[0]].batch.batch_fill_next_token_bitmask([guides[i].matcher for i in rows],
                                                         bitmask, indices=rows)
    masked = logits.clone()
    xgr.apply_token_bitmask_inplace(masked, bitmask.to(logits.device, non_blocking=True),
                                    indices=rows)
    return masked
