"""Worker config: each bad field named, env overrides, the CLI's one-line errors, the example
file, and the Triton model repository it writes."""
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from pipeline_driver import write_config
from worker.config import WorkerConfig
from worker.triton_repo import TritonNotInstalled, check_numpy

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE = dict(model_dir="/models/x", layer_start=2)


def test_toml_with_table_and_env_override(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text('[worker]\nmodel_dir = "/m"\nlayer_start = 3\nexecutor = "local"\n')
    config = WorkerConfig.from_toml(path, environ={"DUET_WORKER_LAYER_START": "5",
                                                   "DUET_WORKER_IDLE_TIMEOUT_S": "2.5"})
    assert (config.model_dir, config.layer_start, config.executor) == ("/m", 5, "local")
    assert config.idle_timeout_s == 2.5


@pytest.mark.parametrize("changes, field", [
    (dict(dtype="fp8"), "dtype"),
    (dict(fp8="fp4"), "fp8"),
    (dict(executor="gpu"), "executor"),
    (dict(listen="50051"), "listen"),
    (dict(layer_start=0), "layer_start"),
    (dict(layer_start=2.5), "layer_start"),
    (dict(kv_cache_bytes="lots"), "kv_cache_bytes"),
    (dict(idle_timeout_s=0), "idle_timeout_s"),
    (dict(tls_cert_file="/c.pem"), "tls_key_file"),
    (dict(tls_client_ca_file="/ca.pem"), "tls_client_ca_file"),
    (dict(triton_url="localhost"), "triton_url"),
    (dict(tls_client_names=["x"]), "tls_client_names"),
    (dict(tls_client_names=[], tls_cert_file="/c", tls_key_file="/k", tls_client_ca_file="/a"),
     "tls_client_names: expected at least one"),
    (dict(stream_kv_share=0), "stream_kv_share"),
    (dict(stream_kv_share=1.5), "stream_kv_share"),
    (dict(stream_max_seqs=0), "stream_max_seqs"),
    (dict(tensor_parallel_size=0), "tensor_parallel_size"),
    (dict(tensor_parallel_size=2), "tensor_parallel_size 2 needs executor = \"local\""),
    (dict(tp_timeout_s=0), "tp_timeout_s"),
    (dict(triton_server_args=["log-verbose=1"]), "triton_server_args: every flag must start"),
    (dict(colour="blue"), "colour"),
])
def test_each_bad_field_is_named(changes, field):
    with pytest.raises(ValueError, match=field):
        WorkerConfig.from_dict({**BASE, **changes}, environ={})


def test_bad_env_override_is_named():
    with pytest.raises(ValueError, match="layer_start: expected an integer"):
        WorkerConfig.from_dict(BASE, environ={"DUET_WORKER_LAYER_START": "two"})


def test_missing_required_field():
    with pytest.raises(ValueError, match="model_dir: missing"):
        WorkerConfig.from_dict({"layer_start": 1}, environ={})


def test_example_config_is_valid():
    config = WorkerConfig.from_toml(REPO_ROOT / "deploy" / "worker" / "host-b.toml", environ={})
    assert config.executor == "triton" and config.tls_client_ca_file


def duet_worker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "duet.cli", "worker", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_bad_config_is_one_line_and_exit_2_before_torch_loads(tmp_path,
                                                                   duet_without_torch):
    path = write_config(tmp_path / "w.toml", model_dir="/m", layer_start=2, dtype="fp8")
    result = duet_without_torch("worker", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "dtype" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051",
                                    "worker.internal:50051"])
def test_beyond_loopback_needs_tls_or_an_explicit_plaintext_opt_in(listen):
    with pytest.raises(ValueError, match="beyond loopback without TLS"):
        WorkerConfig.from_dict({**BASE, "listen": listen}, environ={})
    assert WorkerConfig.from_dict({**BASE, "listen": listen, "allow_plaintext_from_network": True},
                                  environ={}).listen == listen
    tls = WorkerConfig.from_dict({**BASE, "listen": listen, "tls_cert_file": "/c.pem",
                                  "tls_key_file": "/c.key"}, environ={})
    assert tls.tls


def test_loopback_is_the_default_and_needs_nothing():
    assert WorkerConfig.from_dict(BASE, environ={}).listen == "127.0.0.1:50051"
    for listen in ("localhost:1", "[::1]:1", "127.0.0.2:1"):
        assert WorkerConfig.from_dict({**BASE, "listen": listen}, environ={}).listen == listen


def test_client_names_from_env_are_a_comma_list():
    config = WorkerConfig.from_dict(
        {**BASE, "tls_cert_file": "/c", "tls_key_file": "/k", "tls_client_ca_file": "/a"},
        environ={"DUET_WORKER_TLS_CLIENT_NAMES": "master.internal, standby.internal"})
    assert config.tls_client_names == ("master.internal", "standby.internal")


def test_triton_server_args_from_toml_list_or_env_string(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text('model_dir = "/m"\nlayer_start = 3\ntriton_server_args = ["--log-verbose=1"]\n')
    assert WorkerConfig.from_toml(path, environ={}).triton_server_args == ("--log-verbose=1",)
    config = WorkerConfig.from_toml(path, environ={"DUET_WORKER_TRITON_SERVER_ARGS": "--a=1  --b=2"})
    assert config.triton_server_args == ("--a=1", "--b=2")


def test_bundled_tritonserver_is_refused_with_numpy_2():
    """Its stub would get garbage for every input (seen on the H200 host): say why at start."""
    check_numpy("0.7.0", "1.26.4")
    check_numpy("0.8.0", "2.5.2")  # a later bundle is given the benefit of the doubt
    for pytriton in ("0.7.0", ""):  # "" = unpacked without metadata
        with pytest.raises(TritonNotInstalled, match="numpy 2.5.2: install numpy<2"):
            check_numpy(pytriton, "2.5.2")


def test_cli_plaintext_on_the_network_is_one_line_and_exit_2(tmp_path, duet_without_torch):
    path = write_config(tmp_path / "w.toml", model_dir="/m", layer_start=2, listen="0.0.0.0:0")
    result = duet_without_torch("worker", "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "allow_plaintext_from_network" in result.stderr


def test_cli_bad_checkpoint_is_one_line_and_exit_2(tmp_path):
    path = write_config(tmp_path / "w.toml", model_dir=str(tmp_path / "nothing"), layer_start=2,
                        executor="local", listen="127.0.0.1:0")
    result = duet_worker("--config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("duet worker:") and "config.json" in last


def test_cli_tensor_parallel_size_that_does_not_split_the_model_is_one_line_and_exit_2(
        tmp_path, ckpt):
    path = write_config(tmp_path / "w.toml", model_dir=str(ckpt), layer_start=2,
                        executor="local", listen="127.0.0.1:0", tensor_parallel_size=3)
    result = duet_worker("--config", str(path))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert "tensor_parallel_size = 3 does not divide the model's num_attention_heads (4)" in last


def test_write_model_repo_renders_a_valid_triton_config(tmp_path, ckpt):
    path = write_config(tmp_path / "w.toml", model_dir=str(ckpt), layer_start=2, dtype="float32",
                        kv_cache_bytes=12345, cuda_graph_max_batch=8)
    result = duet_worker("--config", str(path), "--write-model-repo", str(tmp_path / "repo"))
    assert result.returncode == 0, result.stderr
    model = tmp_path / "repo" / "duet_tail"
    config = text_format.Parse((model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert config.name == "duet_tail" and config.backend == "python"
    assert params["model_dir"] == str(ckpt) and params["kv_cache_bytes"] == "12345"
    assert params["cuda_graph_max_batch"] == "8"  # the tail in Triton graphs as the local one
    assert [i.name for i in config.input] == ["OP", "STREAM", "STEP", "HIDDEN"]
    assert (model / "1" / "model.py").is_file()
