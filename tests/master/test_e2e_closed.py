"""Closed by default, probed as an attacker would: a second gRPC client built from the
project's stubs tries to take the worker's KV cache, a user's key tries /admin, forged headers
and control characters try the log. Real `duet worker` and `duet master` processes."""
import queue
import socket
import threading
import time
from urllib.parse import urlsplit

import grpc
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e_harness import e2e_stack, toml_text, wait_ready
from proto import pipeline_pb2 as pb
from proto import pipeline_pb2_grpc as pb_grpc

SPLIT = 2
USER, ADMIN = "sk-user-0123", "sk-ops-4567"
WORKER_KV_BYTES = 2 << 20  # 4,096 token slots at 512 B per token (2 fp32 layers, tiny qwen2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_qwen2):
    with e2e_stack(tmp_path_factory.mktemp("e2e_closed"), tiny_qwen2, SPLIT,
                   worker=dict(kv_cache_bytes=WORKER_KV_BYTES), api_keys={"alice": USER},
                   admin_keys={"ops": ADMIN}, admin_from_loopback=False) as stack:
        yield stack


def complete(stack, prompt: str, max_tokens: int = 8):
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=USER, max_retries=0, timeout=60)
    return client.completions.create(model=stack.model.name, prompt=prompt,
                                     max_tokens=max_tokens, temperature=0)


class Attacker:
    """A Step stream of our own to the worker, driven from a thread with the sync stubs."""

    def __init__(self, port: int):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.PipelineStub(self.channel)
        self.outbox: queue.Queue = queue.Queue()
        self.replies = self.stub.Step(iter(self.outbox.get, None))

    def step(self, request: pb.StepRequest) -> pb.StepReply:
        self.outbox.put(request)
        return next(self.replies)

    def close(self) -> None:
        self.outbox.put(None)
        self.channel.close()


def one_token_rows(step_id: int, count: int, width: int) -> pb.StepRequest:
    params = pb.SamplingParams(temperature=0, logprobs=-1)
    seqs = [pb.SeqStep(seq_id=f"x{step_id}-{i}", start_pos=0, num_tokens=1, params=params)
            for i in range(count)]
    hidden = pb.Tensor(data=bytes(4 * count * width), dtype="float32", shape=[count, width])
    return pb.StepRequest(step_id=step_id, seqs=seqs, hidden=hidden)


def test_kv_exhaustion_from_a_second_client_while_the_api_keeps_serving(stack):
    info = pb_grpc.PipelineStub(grpc.insecure_channel(f"127.0.0.1:{stack.port}")).Handshake(
        pb.HandshakeRequest(), timeout=10)  # an attacker learns the layout without a password
    share = info.stream_kv_tokens
    assert share == info.kv_capacity_tokens // 2 and share // 16 < info.stream_max_seqs
    attacker = Attacker(stack.port)
    try:
        held = 0
        for step_id in range(1, 17):  # 16 steps of 2,048 one-token sequences: 32,768 blocks
            reply = attacker.step(one_token_rows(step_id, 2048, info.hidden_size))
            refused = [r for r in reply.results if r.WhichOneof("outcome") == "error"]
            assert all(r.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                       for r in refused)
            held += len(reply.results) - len(refused)
        assert held == share // 16  # one block each, up to the stream's share (stream_kv_share)
        # with the attacker's stream still open and holding its share, the API serves
        assert httpx.get(f"{stack.url}/ready").status_code == 200
        done = []
        threads = [threading.Thread(target=lambda i=i: done.append(complete(stack, f"q{i}")))
                   for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [r.usage.completion_tokens for r in done] == [8, 8, 8]
        assert attacker.step(pb.StepRequest(step_id=17)).kv_used_tokens >= share
    finally:
        attacker.close()


def test_a_user_key_is_refused_on_admin_and_admin_calls_are_logged(stack):
    user, admin = ({"Authorization": f"Bearer {k}"} for k in (USER, ADMIN))
    for headers in ({}, user):  # loopback is not enough here (admin_from_loopback = false)
        r = httpx.post(f"{stack.url}/admin/deactivate", headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert httpx.get(f"{stack.url}/ready").status_code == 200
    assert httpx.post(f"{stack.url}/admin/deactivate", headers=admin).json()["active"] is False
    try:
        ready = httpx.get(f"{stack.url}/ready")  # role master: the VRRP check must fail now
        assert ready.status_code == 503 and "deactivated" in ready.json()["reason"]
        with pytest.raises(openai.APIStatusError) as e:
            complete(stack, "hi")
        assert e.value.status_code == 503
    finally:
        assert httpx.post(f"{stack.url}/admin/activate", headers=admin).json()["active"]
    wait_ready(stack.url)
    log = stack.master.log()
    assert "POST /admin/deactivate by - from 127.0.0.1: refused" in log
    assert "POST /admin/deactivate by ops from 127.0.0.1" in log
    assert "POST /admin/activate by ops from 127.0.0.1" in log
    assert USER not in log and ADMIN not in log


def test_the_access_log_escapes_what_it_writes(stack):
    parts = urlsplit(stack.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(f"GET /v1/models%00%0Aforged=1%20key=ops HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {USER}\r\nConnection: close\r\n\r\n".encode())
        assert b" 404 " in s.recv(4096).split(b"\r\n")[0]
    deadline = time.monotonic() + 10
    while "/v1/models%00" not in stack.master.log():
        assert time.monotonic() < deadline, stack.master.log()
        time.sleep(0.1)
    line = next(x for x in stack.master.log().splitlines() if "/v1/models%00" in x)
    assert '"GET /v1/models%00%0Aforged=1%20key=ops" status=404' in line
    assert not any(x.startswith("forged=1") for x in stack.master.log().splitlines())


def metric_values(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_real_traffic(stack):
    labels = (("model_name", stack.model.name),)
    before = metric_values(stack.url)
    done = [complete(stack, f"count me {i}", max_tokens=5) for i in range(2)]
    after = metric_values(stack.url)

    def delta(name: str, extra: tuple = ()) -> float:
        key = (name, tuple(sorted(labels + extra)))
        return after[key] - before.get(key, 0.0)

    assert delta("vllm:generation_tokens_total") == 10
    assert delta("vllm:prompt_tokens_total") == sum(r.usage.prompt_tokens for r in done)
    assert delta("vllm:request_success_total", (("finished_reason", "length"),)) == 2
    assert delta("vllm:e2e_request_latency_seconds_count") == 2
    assert delta("vllm:time_to_first_token_seconds_count") == 2
    assert delta("duet:pipeline_hop_seconds_count") >= 5  # a step per token at least
    assert after[("vllm:num_requests_running", labels)] == 0




@pytest.mark.parametrize("env, fields, named", [
    ({"DUET_API_KEYS": ""}, {}, "api_keys: set but empty"),
    ({"DUET_API_KEYS": " , "}, {}, "api_keys"),
    ({"DUET_API_KEYS": "alice:"}, {}, "api_keys: empty or non-string key for 'alice'"),
    ({"DUET_ADMIN_KEYS": "ops:a,ops:b"}, {}, "admin_keys: key id 'ops' appears twice"),
    ({}, {"api_keys": []}, "api_keys: set but empty"),
    ({}, {"port": 70000}, "port: expected 0..65535"),
])
def test_empty_or_malformed_settings_stop_duet_master_with_exit_2_before_torch_loads(
        tmp_path, duet_without_torch, env, fields, named):
    config = tmp_path / "master.toml"
    config.write_text(toml_text({"model_dir": str(tmp_path / "unused"), **fields}))
    result = duet_without_torch("master", "--config", str(config), env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert named in result.stderr
