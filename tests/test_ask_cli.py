"""`colpali-milvus ask` as a user runs it (each run starts Python, torch and Milvus Lite: ~10 s, so the other bad inputs
are tested in process, tests/test_ask.py): the installed console script on the sample PDF indexed with the tiny
ColPali, answered by a tiny random VLM; the answer streams, the cited (or given) pages follow, `--json` prints the
answer object, bad input is one line on stderr with exit status 2."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from colpali_milvus.ask import build_tiny_vlm

CLI = str(Path(sys.executable).parent/'colpali-milvus')
Q = ['What', 'is', 'late', 'interaction?']
pytestmark = pytest.mark.timeout(300)


def run(*args, timeout=180):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_HUB_DISABLE_PROGRESS_BARS': '1'}
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope='module')
def db(tmp_path_factory, tiny_model_dir, sample_pdf):
    d = tmp_path_factory.mktemp('ask-cli')
    r = run('index', sample_pdf, '--db', d/'i.db', '--model', tiny_model_dir, '--no-progress')
    assert r.returncode == 0, r.stderr
    return d/'i.db'


@pytest.fixture(scope='module')
def vlm(tmp_path_factory):
    return build_tiny_vlm('qwen2-vl', tmp_path_factory.mktemp('cli-vlm')/'qwen2-vl')


def test_ask_streams_then_lists_pages(db, vlm, sample_pdf):
    r = run('ask', *Q, '--db', db, '--vlm', vlm, '-k', '2', '--max-new-tokens', '6')
    assert r.returncode == 0, r.stderr
    assert 'TINY RANDOM VLM' in r.stderr and 'Traceback' not in r.stderr  # the banner, on stderr: stdout is the answer
    answer, _, pages = r.stdout.partition('\n\n')
    head, *rows = pages.strip().splitlines()
    assert head in ('Cited pages:', 'The answer cites no page. Pages given:')
    assert rows and all(str(sample_pdf.resolve()) in row and ' p. ' in row for row in rows)
    if head.startswith('The answer cites no page'): assert [row.split()[0] for row in rows] == ['[1]', '[2]']


def test_ask_json(db, vlm):
    r = run('ask', *Q, '--db', db, '--vlm', vlm, '-k', '3', '--max-new-tokens', '4', '--json')
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d['question'] == ' '.join(Q) and d['is_tiny'] and d['image_tokens'] > 0
    assert [p['n'] for p in d['pages']] == [1, 2, 3] and [p['rank'] for p in d['pages']] == [1, 2, 3]
    assert set(d['timings']) == {'retrieve', 'prepare', 'first_token', 'total'}
    assert d['model'] == str(Path(vlm).resolve())


def test_bad_input_is_one_clear_line(db, vlm):
    cases = [(['ask', '  ', '--db', db, '--vlm', vlm], 'question is empty'),
             (['ask', *Q, '--db', db, '--vlm', 'HuggingFaceTB/SmolVLM-256M-Instruct'], '--vlm DIR')]
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    cases.append((['ask', *Q, '--db', db, '--vlm', f'http://127.0.0.1:{port}/v1'], 'does not answer'))
    for args, msg in cases:
        r = run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert 'colpali-milvus: error:' in r.stderr and msg in r.stderr, (args, r.stderr)
        assert 'Traceback' not in r.stderr, r.stderr
