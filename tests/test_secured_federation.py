"""Chapter 5's federation between hospitals as the README sets it up: TLS and SuperNode authentication.

One SuperLink with a CA-signed certificate that accepts registered SuperNodes only, two registered SuperNodes
that trust the CA, one FedAvg round of ``flower_app`` submitted with ``flwr run`` over TLS, all on loopback. Then
what must be refused: a SuperNode whose key was never registered, and a SuperNode or a ``flwr`` client that
does not have the CA certificate. What this cannot catch: anything about networks between machines.
"""

import subprocess

import pytest

from medsec_utils import federated

from _flower_deployment import (BIN, environment, free_port, make_certificates, make_supernode_keys, start,
                                wait_for_port)
from _kill import stop_process_trees
from _paths import REPO

REFUSAL_SECONDS = 60  # a refused SuperNode gives up after its retries well within this


def _supernode(port: int, key, site: int, *, ca=None) -> list:
    trust = ["--root-certificates", ca] if ca else []
    return [BIN / "flower-supernode", *trust, "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
            "--auth-supernode-private-key", key, "--max-retries", "2", "--max-wait-time", "20",
            "--node-config", f"partition-id={site}"]


def _refused(process: subprocess.Popen, log) -> str:
    try:
        process.wait(timeout=REFUSAL_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a SuperNode that must be refused was still running after {REFUSAL_SECONDS} s:\n"
                    f"{log.read_text()[-2000:]}")
    assert process.returncode != 0, log.read_text()[-2000:]
    return log.read_text()


@pytest.mark.slow
def test_one_round_over_tls_between_registered_supernodes_and_strangers_are_refused(tmp_path):
    certs = make_certificates(tmp_path / "certs")
    keys = {name: make_supernode_keys(tmp_path / "keys", name) for name in ("site_a", "site_b", "stranger")}
    port = free_port()
    env = environment(tmp_path / "flwr_home")
    (tmp_path / "flwr_home" / "config.toml").write_text(
        f'[superlink.hospitals]\naddress = "127.0.0.1:{port}"\nroot-certificates = "{certs["ca"]}"\n'
        f'[superlink.untrusting]\naddress = "127.0.0.1:{port}"\n')
    processes = [start([BIN / "flower-superlink", "--ssl-ca-certfile", certs["ca"], "--ssl-certfile", certs["cert"],
                        "--ssl-keyfile", certs["key"], "--enable-supernode-auth",
                        "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(port)],
                       tmp_path / "superlink.log", env)]
    try:
        wait_for_port(port)
        for name in ("site_a", "site_b"):
            registered = subprocess.run([BIN / "flwr", "supernode", "register", keys[name][1], "hospitals"],
                                        env=env, capture_output=True, text=True, timeout=120)
            assert registered.returncode == 0 and "registered successfully" in registered.stdout, \
                registered.stdout + registered.stderr
        for site, name in enumerate(("site_a", "site_b")):
            processes.append(start(_supernode(port, keys[name][0], site, ca=certs["ca"]),
                                   tmp_path / f"{name}.log", env))
        stranger_log, untrusting_log = tmp_path / "stranger.log", tmp_path / "untrusting.log"
        stranger = start(_supernode(port, keys["stranger"][0], 0, ca=certs["ca"]), stranger_log, env)
        untrusting = start(_supernode(port, keys["site_a"][0], 0), untrusting_log, env)
        processes += [stranger, untrusting]

        store = tmp_path / "store"
        done = subprocess.run([BIN / "flwr", "run", REPO / "flower_app", "hospitals", "--stream", "--run-config",
                               f"store='{store}' image_size=32 rounds=1"],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        assert [r["round"] for r in federated.RoundStore(store).rounds()] == [1], (done.stdout + done.stderr)[-3000:]
        assert set(federated.RoundStore(store).models(1)) == {"server", "site 0", "site 1"}

        assert "Failed to activate SuperNode" in _refused(stranger, stranger_log)
        assert "CERTIFICATE_VERIFY_FAILED" in _refused(untrusting, untrusting_log)
        without_ca = subprocess.run([BIN / "flwr", "ls", "untrusting"], env=env, capture_output=True, text=True,
                                    timeout=120)  # the same address as "hospitals", which ran the round above
        assert without_ca.returncode != 0 and "unavailable" in without_ca.stdout + without_ca.stderr, \
            without_ca.stdout + without_ca.stderr
    finally:
        alive = stop_process_trees(processes)
    assert not alive, f"processes left behind: {[p.pid for p in alive]}"
