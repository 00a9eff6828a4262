"""The head's hidden states and sampling params as the worker decodes them."""
import pytest
import torch

from engine.sampler import SampleResult
from engine.sampling_params import SamplingParams
from master.generation import GenerationRequest
from master.scheduler import Scheduler, SchedulerConfig
from master.sequence import Sequence
from master.wire import step_request
from proto.convert import tensor_from_proto, tensor_to_proto


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_hidden_states_cross_the_wire_bit_for_bit(dtype):
    hidden = torch.randn(5, 64).to(dtype)  # [T, H]
    msg = tensor_to_proto(hidden)
    assert list(msg.shape) == [5, 64] and len(msg.data) == 5 * 64 * hidden.element_size()
    back = tensor_from_proto(msg)
    assert back.dtype == dtype and torch.equal(back, hidden)


def test_params_go_on_first_appearance_with_the_prompt_only_when_needed():
    s = Scheduler(SchedulerConfig(max_inflight_batches=1))
    s.set_limits(1000)
    plain = Sequence(GenerationRequest("plain", [5, 6], SamplingParams(seed=3, logprobs=2), 4))
    rep = Sequence(GenerationRequest("rep", [7, 8], SamplingParams(repetition_penalty=1.3), 4))
    s.add(plain)
    s.add(rep)
    batch = s.schedule()
    msg = step_request(batch, tensor_to_proto(torch.zeros(4, 8)))
    first, second = msg.seqs
    assert (first.start_pos, first.num_tokens, first.sample) == (0, 2, True)
    assert first.params.seed == 3 and first.params.logprobs == 2
    assert list(first.params.prompt_token_ids) == []
    assert list(second.params.prompt_token_ids) == [7, 8]
    s.postprocess(batch, {"plain": SampleResult(9, None), "rep": SampleResult(9, None)})
    s.finish(rep, "cancelled")
    later = step_request(s.schedule(), tensor_to_proto(torch.zeros(1, 8)))
    assert not later.seqs[0].HasField("params") and list(later.release) == ["rep"]
