"""`duet master` talks to a mutual-TLS worker with the certificates its config names."""
import openai

from e2e_harness import start_master, start_worker, wait_not_ready, wait_ready

SPLIT = 2


def test_master_serves_over_mutual_tls_and_a_plaintext_master_is_refused(
        tmp_path, tiny_qwen2, tls_certs):
    model = tiny_qwen2
    worker, port = start_worker(tmp_path, model, SPLIT, tls_cert_file=str(tls_certs / "server.pem"),
                                tls_key_file=str(tls_certs / "server.key"),
                                tls_client_ca_file=str(tls_certs / "ca.pem"))
    services = [worker]
    try:
        master, url = start_master(tmp_path, model, SPLIT, port,
                                   tls_ca_file=str(tls_certs / "ca.pem"),
                                   tls_cert_file=str(tls_certs / "client.pem"),
                                   tls_key_file=str(tls_certs / "client.key"))
        services.append(master)
        wait_ready(url)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        r = client.completions.create(model=model.name, prompt="secure", max_tokens=3)
        assert r.usage.completion_tokens == 3

        plain, plain_url = start_master(tmp_path, model, SPLIT, port, name="plaintext")
        services.append(plain)
        assert "unreachable" in wait_not_ready(plain_url, "unreachable")
    finally:
        for service in reversed(services):
            service.stop()
