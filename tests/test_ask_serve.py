"""The endpoint path against a real OpenAI-compatible server: `transformers serve` on 127.0.0.1 (a free port) serving
a tiny random SmolVLM folder; streaming and non-streaming answers, and the clear errors when the server is down or
does not serve the model asked for."""
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from colpali_milvus.ask import EndpointVLM, LocalVLM, VLMUnavailableError, build_messages, build_tiny_vlm, page_images

Q = "Where is the ColBERT performance table?"
SERVE = Path(sys.executable).parent/'transformers'
pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not SERVE.exists(), reason='the transformers CLI is not installed')]


def free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def wait_up(proc, url:str, log:Path, timeout:float=120.):
    import urllib.request
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f'transformers serve exited {proc.returncode}:\n{log.read_text()[-3000:]}')
        try:
            with urllib.request.urlopen(url + '/models', timeout=2) as r:
                if r.status == 200: return
        except OSError: time.sleep(0.5)
    raise RuntimeError(f'transformers serve did not answer in {timeout} s:\n{log.read_text()[-3000:]}')


@pytest.fixture(scope='module')
def served(tmp_path_factory):
    "(base URL, model folder) of a `transformers serve` process serving a tiny random SmolVLM."
    root = tmp_path_factory.mktemp('serve')
    model = build_tiny_vlm('smolvlm', root/'smolvlm')
    port, log = free_port(), root/'serve.log'
    env = {**os.environ, 'HF_HUB_OFFLINE': '1'}
    with open(log, 'w') as f:
        proc = subprocess.Popen([str(SERVE), 'serve', str(model), '--host', '127.0.0.1', '--port', str(port),
                                 '--device', 'cpu'],
                                stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f'http://127.0.0.1:{port}/v1'
    try:
        wait_up(proc, url, log)
        yield url, model, proc
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()


@pytest.fixture(scope='module')
def index(sample_index):
    yield from sample_index()


def test_streaming_through_the_server(served, index):
    url, model, _ = served
    st = index.ask_stream(Q, k=2, vlm=url, max_new_tokens=8)
    pieces = list(st)
    ans = st.answer
    assert len(pieces) > 1 and ''.join(pieces).strip() == ans.text and ans.text   # streamed piece by piece
    assert ans.model == f'{model} @ {url}'
    assert [p.page_id for p in ans.pages] == [r.page_id for r in index.search(Q, k=2)]
    assert set(ans.timings) == {'retrieve', 'prepare', 'first_token', 'total'}
    assert ans.timings['first_token'] <= ans.timings['total'] and ans.image_tokens is None


def test_non_streaming_matches_streaming_and_the_local_model(served, index):
    "Greedy decoding: the server's whole answer, its streamed answer and the same model in process agree."
    url, model, _ = served
    vlm = EndpointVLM(url, max_new_tokens=8)
    assert vlm.model == str(model)  # the only model the server lists
    msgs = build_messages(Q, page_images(index.search(Q, k=1)))
    whole = vlm.complete(vlm.prepare(msgs)[0])
    streamed = ''.join(vlm.stream(vlm.prepare(msgs)[0]))
    # random byte tokens can end in half a UTF-8 character: the whole answer shows it as U+FFFD, a stream holds it back
    assert whole and streamed and whole.startswith(streamed) and set(whole[len(streamed):]) <= {'\ufffd'}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        local = LocalVLM(str(model), device='cpu', max_new_tokens=8)
    assert ''.join(local.stream(local.prepare(msgs)[0])) == whole  # the same model, greedy, in process


def test_a_model_the_server_does_not_serve(served, index):
    url, _, _ = served
    with pytest.raises(VLMUnavailableError, match=r"refused the request \(400.*pinned"):
        index.ask(Q, k=1, vlm=url, model='someone/else', max_new_tokens=4)


def test_server_down_is_a_clear_error(index, capfd):
    url = f'http://127.0.0.1:{free_port()}/v1'   # nothing listens there
    with pytest.raises(VLMUnavailableError, match=r'does not answer.*Start the server'):
        index.ask(Q, k=1, vlm=url)
    with pytest.raises(VLMUnavailableError, match=r'does not answer'):
        EndpointVLM(url, model='m').complete([{'role': 'user', 'content': [{'type': 'text', 'text': 'hi'}]}])
    assert 'Traceback' not in capfd.readouterr().err


def test_server_stopped_mid_session(served, index):
    "A server that answered and then went away: the next question fails clearly, not with a hang or a traceback."
    url, model, proc = served
    vlm = EndpointVLM(url, max_new_tokens=4, timeout=30)
    proc.terminate(); proc.wait(20)
    with pytest.raises(VLMUnavailableError, match='does not answer'):
        index.ask(Q, k=1, vlm=vlm)
