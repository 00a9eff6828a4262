"""MasterConfig from TOML + environment; API keys and their log-safe ids."""
import pytest

from master.api_keys import key_id, parse_api_keys
from master.auth import ApiKeyChecker
from master.config import MasterConfig, load_master_config

TOML = """
model_dir = "/models/r1"
port = 9000
head_layer_end = 4
dtype = "bfloat16"
kv_cache_bytes = 1_073_741_824
log_prompts = true
api_keys = { alice = "sk-alice-secret" }
"""


def write(tmp_path, text: str):
    path = tmp_path / "master.toml"
    path.write_text(text)
    return path


def test_toml_then_environment_then_arguments(tmp_path):
    env = {"DUET_MASTER_PORT": "9100", "DUET_MASTER_LOG_PROMPTS": "false",
           "DUET_API_KEYS": "bob:sk-bob,sk-anon", "OTHER": "x"}
    c = load_master_config(write(tmp_path, TOML), env=env, max_num_seqs=8)
    assert (c.port, c.head_layer_end, c.dtype, c.kv_cache_bytes) == (9100, 4, "bfloat16", 2**30)
    assert c.log_prompts is False and c.max_num_seqs == 8
    assert c.served_model_name == "r1"  # the folder's name when unset
    assert dict(c.api_keys) == {"bob": "sk-bob", key_id("sk-anon"): "sk-anon"}


def test_every_bad_field_is_named_in_one_line(tmp_path):
    text = TOML + 'role = "primary"\nmax_num_seqs = 0\nworker_adress = "b:1"\n'
    with pytest.raises(ValueError) as e:
        load_master_config(write(tmp_path, text), env={"DUET_MASTER_DTYPE": "int4"})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "master.toml"))
    assert "worker_adress: unknown field" in msg
    with pytest.raises(ValueError) as e:
        load_master_config(write(tmp_path, TOML + 'role = "primary"\nmax_num_seqs = 0\n'),
                           env={"DUET_MASTER_DTYPE": "int4"})
    for field in ("role", "max_num_seqs", "dtype"):
        assert f"{field}: expected" in str(e.value)


@pytest.mark.parametrize("env,field", [
    ({"DUET_MASTER_PORT": "eighty"}, "port: expected an integer, got 'eighty'"),
    ({"DUET_MASTER_FP8": "always"}, "fp8: expected native | dequantize, got 'always'"),
    ({"DUET_MASTER_LOG_PROMPTS": "maybe"}, "log_prompts: expected true or false"),
    ({"DUET_MASTER_PORT": "70000"}, "port: expected 0..65535, got 70000"),
    ({"DUET_MASTER_TENSOR_PARALLEL_SIZE": "0"}, "tensor_parallel_size: expected >= 1"),
    ({"DUET_API_KEYS": "alice:"}, "api_keys: empty or non-string key for 'alice'"),
])
def test_bad_environment_values_are_named(tmp_path, env, field):
    with pytest.raises(ValueError, match=field):
        load_master_config(write(tmp_path, TOML), env=env)


def test_unreadable_toml_and_missing_model_dir(tmp_path):
    with pytest.raises(ValueError, match="master.toml: Invalid value .*line 2"):
        load_master_config(write(tmp_path, "model_dir = \"m\"\nport = \n"), env={})
    with pytest.raises(ValueError, match="model_dir: missing"):
        load_master_config(write(tmp_path, "port = 1"), env={})
    with pytest.raises(ValueError, match="nope.toml"):
        load_master_config(tmp_path / "nope.toml", env={})


def test_keys_never_show_in_the_config_repr_or_their_ids():
    c = MasterConfig(model_dir="m", api_keys=parse_api_keys(["sk-very-secret"]))
    assert "sk-very-secret" not in repr(c)
    (kid,) = c.api_keys
    assert kid.startswith("key-") and "secret" not in kid


def test_key_checker_accepts_only_configured_bearer_keys():
    checker = ApiKeyChecker({"alice": "sk-a", "bob": "sk-b"})
    assert checker.check("Bearer sk-b") == "bob"
    assert checker.check("bearer  sk-a ") == "alice"
    for header in (None, "", "Bearer", "Bearer sk-c", "Basic sk-a", "sk-a", "Bearer sk-a2"):
        assert checker.check(header) is None
    assert ApiKeyChecker({}).check(None) == "anonymous"  # no keys configured: open
