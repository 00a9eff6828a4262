"""`duet master` talks to a mutual-TLS worker with the certificates its config names."""
import openai

from e2e_harness import E2EStack, master_url, wait_not_ready, wait_ready

SPLIT = 2


def test_master_serves_over_mutual_tls_and_a_plaintext_master_is_refused(
        tmp_path, tiny_qwen2, tls_certs):
    stack = E2EStack(tmp_path, tiny_qwen2, SPLIT, tls_cert_file=str(tls_certs / "server.pem"),
                     tls_key_file=str(tls_certs / "server.key"),
                     tls_client_ca_file=str(tls_certs / "ca.pem"))
    try:
        master = stack.spawn_api("master", tls_ca_file=str(tls_certs / "ca.pem"),
                                 tls_cert_file=str(tls_certs / "client.pem"),
                                 tls_key_file=str(tls_certs / "client.key"))
        plain = stack.spawn_api("plaintext")
        stack.worker.wait_for(r"worker ready")
        url, plain_url = master_url(master), master_url(plain)
        wait_ready(url)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        r = client.completions.create(model=tiny_qwen2.name, prompt="secure", max_tokens=3)
        assert r.usage.completion_tokens == 3
        assert "unreachable" in wait_not_ready(plain_url, "unreachable")
    finally:
        stack.stop()
