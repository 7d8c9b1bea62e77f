"""`rayembed serve` as users run it: the clients people call it with (the openai client, LangChain,
LlamaIndex) getting the engine's vectors; stopped by a signal to its process group, as a supervisor
stops it; two on one machine; and a config that cannot deploy ending the command with one message."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MODEL = "all-MiniLM-L6-v2"
TEXTS = ["a vector search over a corpus", "the engine's own vectors", "through the clients people use"]


def session_processes(sid: int) -> list[int]:
    """Every live process of a session (what a process-group signal is aimed at, and what it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return True
    return False


class Server:
    def __init__(self, port: int, log: Path, config: Path | None = None) -> None:
        self.port, self.log = port, log
        command = [sys.executable, "-m", "rayembed", "serve", "--port", str(port)] + (["--config", str(config)] if config else [])
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # Its own session, as a supervisor or CI runner starts it: the signal goes to the whole group.
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env,
                                        cwd=ROOT, start_new_session=True)
        self.pids: list[int] = []

    def wait_healthy(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as response:
                    if response.status == 200 and "rayembed: serving" in self.log.read_text():
                        self.pids = session_processes(self.process.pid)
                        return
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError(f"not healthy in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def haproxy_ports(self) -> list[int]:
        line = next(line for line in self.log.read_text().splitlines() if line.startswith("rayembed: serving"))
        return [int(word.rstrip(",").rsplit(":", 1)[1]) for word in line.split() if word.startswith("127.0.0.1:")][1:]

    def embed(self, text: str) -> list[float]:
        body = json.dumps({"model": "all-MiniLM-L6-v2", "input": text}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/embeddings", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["data"][0]["embedding"]

    def stop_group(self, sig: signal.Signals = signal.SIGTERM) -> None:
        os.killpg(self.process.pid, sig)
        self.process.wait(timeout=120)


@pytest.fixture(scope="module")
def served(unused_port, tmp_path_factory):
    """One `rayembed serve` with the default config, for the clients and as the second of two servers.
    No test stops it, so they may run in any order; it is stopped here, once they are done."""
    server = Server(unused_port(), tmp_path_factory.mktemp("served") / "server.log")
    server.wait_healthy()
    yield server
    # The stop signal the side-by-side test does not send its own servers: as clean a stop on SIGHUP.
    if server.process.poll() is None:
        server.stop_group(signal.SIGHUP)
    assert server.process.returncode == 0, server.log.read_text()[-3000:]


def test_openai_client_sync_and_async_with_extra_body_fields(served, fp32_embedder):
    from openai import AsyncOpenAI, OpenAI

    from actors.quantize import quantize

    base = f"http://127.0.0.1:{served.port}/v1"
    client = OpenAI(base_url=base, api_key="unused", max_retries=0)
    got = client.embeddings.create(model=MODEL, input=TEXTS)  # base64, which the client asks for and decodes
    assert np.allclose([d.embedding for d in got.data], fp32_embedder.embed(TEXTS), atol=1e-5)
    long = "start " * 300 + "the end of a long text"
    fields = {"truncate": "START", "normalize": False, "embedding_type": "ubinary"}
    packed = client.embeddings.create(model=MODEL, input=[long], encoding_format="float", extra_body=fields)
    assert len(packed.data[0].embedding) == 48
    # The engine's vector of the text cut at its start, unnormalised, quantised as ubinary; a sign within
    # float noise of zero may come out either way in two processes, so only the clear ones are compared.
    engine = fp32_embedder.finish(fp32_embedder.dense_tokens(fp32_embedder.tokenize([long], truncate="START").tokens),
                                  normalize=False)
    clear = np.abs(engine[0]) > 1e-4
    got = np.unpackbits(np.array(packed.data[0].embedding, dtype=np.uint8))
    assert np.array_equal(got[clear], np.unpackbits(quantize(engine, "ubinary")[0])[clear])

    async def concurrently() -> list:
        async with AsyncOpenAI(base_url=base, api_key="unused", max_retries=0) as aclient:
            return await asyncio.gather(*(aclient.embeddings.create(model=MODEL, input=text, extra_body={"input_type": "query"})
                                          for text in TEXTS))

    answers = asyncio.run(concurrently())
    assert np.allclose([a.data[0].embedding for a in answers], fp32_embedder.embed(TEXTS, input_type="query"), atol=1e-5)


def test_langchain_openai_embeddings_with_text_not_token_arrays(served, fp32_embedder):
    """LangChain's OpenAIEmbeddings sends tiktoken's token ids unless check_embedding_ctx_length=False (the
    refusal that names the setting: test_online_app); with it, the text, and gets the engine's vectors."""
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model=MODEL, base_url=f"http://127.0.0.1:{served.port}/v1", api_key="unused",
                                  check_embedding_ctx_length=False, max_retries=0)
    expected = fp32_embedder.embed(TEXTS)
    assert np.allclose(embeddings.embed_documents(TEXTS), expected, atol=1e-5)
    assert np.allclose(embeddings.embed_query(TEXTS[0]), expected[0], atol=1e-5)


def test_llamaindex_openai_like_embedding(served, fp32_embedder):
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    embed = OpenAILikeEmbedding(model_name=MODEL, api_base=f"http://127.0.0.1:{served.port}/v1", api_key="unused",
                                max_retries=0)
    expected = fp32_embedder.embed(TEXTS)
    assert np.allclose(embed.get_text_embedding_batch(TEXTS), expected, atol=1e-5)
    assert np.allclose(embed.get_query_embedding(TEXTS[1]), expected[1], atol=1e-5)


@pytest.fixture
def servers(unused_port, tmp_path):
    started: list[Server] = []

    def start(config: Path | None = None) -> Server:
        server = Server(unused_port(), tmp_path / f"server-{len(started)}.log", config)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop_group(signal.SIGKILL)


def test_two_servers_side_by_side_and_a_group_sigterm_leaves_nothing_behind(servers, served, fp32_embedder):
    first, second = servers(), served
    first.wait_healthy()
    expected = fp32_embedder.embed(["side by side"])[0]
    for server in (first, second):
        assert float(sum(a * b for a, b in zip(server.embed("side by side"), expected))) >= 0.9999
    ports = [first.port, *first.haproxy_ports()]
    assert len(ports) == 3 and len(set(ports + second.haproxy_ports())) == 5, "each server has its own HAProxy ports"

    first.stop_group(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and ([p for p in first.pids if Path(f"/proc/{p}").exists()] or any(map(listening, ports))):
        time.sleep(1)
    left = [p for p in first.pids if Path(f"/proc/{p}").exists()]
    assert left == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in left if Path(f"/proc/{p}").exists()]
    assert not any(map(listening, ports)), "a port of the stopped server still listens"
    assert second.embed("still here")  # the other server is untouched

    # SIGINT, SIGTERM and SIGHUP share one handler (cluster/serving.py): a clean stop on each (SIGHUP
    # is the shared server's, once the module is done).
    again = servers()
    again.wait_healthy()
    again.stop_group(signal.SIGINT)
    assert [first.process.returncode, again.process.returncode] == [0, 0]


def test_a_config_with_an_unknown_model_property_exits_2_naming_it(tmp_path):
    config = yaml.safe_load((ROOT / "serve_apps" / "config.yaml").read_text())
    config["applications"][0]["args"]["models"][0]["modle_location"] = "/models/x"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "rayembed", "serve", "--config", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "modle_location" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 30
