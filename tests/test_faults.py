"""Faults: kill -9 while indexing (for real, a subprocess killed at several points), a second process on the same
Milvus Lite database, and a Milvus server that goes away mid-session.

After every kill the database is reopened and checked: every page row has all its vectors (n_vectors rows in the page
files, and its own centroid block), every page the child had acknowledged is there, and running the same `add` again
encodes only what is missing and ends with the same vectors a clean run gives.
"""
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hostile import make_pdf

from colpali_milvus.core import MilvusUnavailableError, file_sha256
from colpali_milvus.index import ColPaliIndex, page_id_for
from colpali_milvus.store import META_FIELDS

pytestmark = pytest.mark.timeout(600)
N_PAGES, CHUNK = 16, 4
ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent('''
    import sys, time, warnings
    warnings.simplefilter('ignore')
    import colpali_milvus.rasterize as rz
    from colpali_milvus.index import ColPaliIndex
    db, pages, model, pdf, mode = sys.argv[1:6]
    def say(*a): print(*a, flush=True)
    idx = ColPaliIndex(db, model=model, pages_dir=pages)
    r = idx.retriever
    acks = []
    real_add = r.add_pages
    def add_pages(ids, vecs, meta):
        real_add(ids, vecs, meta); acks.append(ids); say('ACK', *ids)
    r.add_pages = add_pages
    def hang(what): say('HANG', what); time.sleep(600)
    if mode == 'raster':        # stop inside the thread pool that saves page PNGs, after one committed chunk
        real_save, n = rz._save_png, [0]
        def save(im, dest):
            n[0] += 1
            if n[0] == CHUNK + 3: hang('raster')
            real_save(im, dest)
        rz._save_png = save
    if mode == 'blobs':         # stop after a page's vectors are written and before its page row is
        from colpali_milvus.store import PageFiles
        real_append = PageFiles.append
        def append(*a, **kw):
            out = real_append(*a, **kw)
            if acks: hang('blobs')
            return out
        PageFiles.append = append   # the retriever makes its PageFiles when it creates the collection
    if mode == 'delete':        # stop right after stale page rows are deleted, before anything else happens
        real_delete = r.db.delete
        def delete(coll, **kw):
            out = real_delete(coll, **kw)
            if coll == r.collection_name: hang('delete')
            return out
        r.db.delete = delete
    say('START')
    rep = idx.add(pdf, chunk=CHUNK, progress=False)
    say('DONE', len(rep))
''').replace('CHUNK', str(CHUNK))




def _env():
    return {**os.environ, 'PYTHONPATH': f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", 'HF_HUB_OFFLINE': '1',
            'TOKENIZERS_PARALLELISM': 'false'}


def run_and_kill(tmp_path, model_dir, pdf, mode, kill_when, delay=0.0, timeout=240):
    "Run the child; SIGKILL it `delay` s after a line starting with `kill_when`; the page ids it acknowledged."
    script = tmp_path / 'child.py'; script.write_text(CHILD)
    p = subprocess.Popen([sys.executable, str(script), str(tmp_path / 'k.db'), str(tmp_path / 'pages'), str(model_dir),
                          str(pdf), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in p.stdout], daemon=True).start()
    acked, seen, t0 = set(), [], time.monotonic()
    try:
        while True:
            try: line = lines.get(timeout=1)
            except queue.Empty:
                if p.poll() is not None: pytest.fail(f"child ended before {kill_when!r}: {p.stderr.read()[-3000:]}")
                if time.monotonic() - t0 > timeout: pytest.fail(f"no {kill_when!r} after {timeout} s: {seen}")
                continue
            seen.append(line.strip())
            if line.startswith('ACK'): acked |= {int(x) for x in line.split()[1:]}
            if line.startswith(kill_when): break
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
        while not lines.empty():  # acknowledgements printed before the kill landed
            line = lines.get()
            if line.startswith('ACK'): acked |= {int(x) for x in line.split()[1:]}
    finally:
        if p.poll() is None: p.kill(); p.wait(30)
    assert p.returncode == -signal.SIGKILL
    return acked


def check_whole(idx):
    "Every page row has all its vectors; returns the rows by page id."
    r = idx.retriever
    if not r.exists(): return {}  # killed before the collection was made (or while it was being made)
    rows = {int(x['page_id']): x for x in r.all_page_rows(META_FIELDS)}
    vectors = r.read_vectors(list(rows.values()))  # raises if any page's vectors are missing from the page files
    bits, slot_ids = r.files.centroids()
    for pid, full in vectors.items():
        assert full.shape == (rows[pid]['n_vectors'], r.dim) and np.isfinite(full).all()
        assert slot_ids[rows[pid]['slot']] == pid   # its centroid block is whole and is its own
        assert len(bits) >= (rows[pid]['slot'] + 1) * r.pool
    return rows


def reopen_check_and_finish(tmp_path, encoder, pdf, acked, n_pages=N_PAGES):
    idx = ColPaliIndex(tmp_path / 'k.db', encoder=encoder, pages_dir=tmp_path / 'pages')  # the lock died with the child
    src, sha = str(pdf.resolve()), file_sha256(pdf)
    rows = check_whole(idx)
    assert acked <= set(rows), "a page the child had acknowledged is missing"
    assert all(rows[i]['sha256'] == sha and rows[i]['source'] == src for i in acked)
    done = {i for i, x in rows.items() if x['sha256'] == sha}
    if rows: assert len(idx.search('lorem', k=3)) == min(3, len(rows))  # searchable as it is
    rep = idx.add(pdf, chunk=CHUNK, progress=False)  # the same add again completes the job
    assert len(rep) == n_pages - len(done)  # only what was missing is encoded
    rows = check_whole(idx)
    want = {page_id_for(src, p) for p in range(1, n_pages + 1)}
    assert set(rows) == want and all(x['sha256'] == sha for x in rows.values())
    paths = [rows[page_id_for(src, p)]['image_path'] for p in range(1, n_pages + 1)]
    fresh = encoder.encode_images(paths, progress=False)
    stored = idx.retriever.page_vectors({page_id_for(src, p): rows[page_id_for(src, p)] for p in range(1, n_pages + 1)})
    for p, v in zip(range(1, n_pages + 1), fresh):
        np.testing.assert_allclose(stored[page_id_for(src, p)], v, atol=2e-3)
    assert idx.add(pdf, progress=False) == []
    idx.close()
    return len(acked), len(done)


@pytest.mark.parametrize('mode,kill_when,delay', [
    ('plain', 'ACK', 0.0),       # right after the first acknowledged chunk
    ('plain', 'ACK', 0.15),      # somewhere in the next chunk (render, encode or insert)
    ('plain', 'ACK', 0.6),
    ('plain', 'START', 1.0),     # early: while probing/rendering/encoding the first chunk
    ('raster', 'HANG', 0.0),     # inside the PNG-saving threads
    ('blobs', 'HANG', 0.0),      # between a page's vectors and its page row
])
def test_kill_while_adding(tmp_path, tiny_model_dir, encoder, mode, kill_when, delay, record_property):
    pdf = make_pdf(tmp_path / 'long.pdf', N_PAGES)
    acked = run_and_kill(tmp_path, tiny_model_dir, pdf, mode, kill_when, delay)
    n_acked, n_done = reopen_check_and_finish(tmp_path, encoder, pdf, acked)
    record_property('acked_pages', n_acked); record_property('whole_pages_after_kill', n_done)


def test_kill_while_removing_stale_pages(tmp_path, tiny_model_dir, encoder):
    "A file that got shorter: killed right after its extra page rows are deleted."
    pdf = make_pdf(tmp_path / 'doc.pdf', 10)
    with ColPaliIndex(tmp_path / 'k.db', encoder=encoder, pages_dir=tmp_path / 'pages') as idx:
        idx.add(pdf, progress=False)
    make_pdf(pdf, 6, text='second edition')
    run_and_kill(tmp_path, tiny_model_dir, pdf, 'delete', 'HANG')
    reopen_check_and_finish(tmp_path, encoder, pdf, set(), n_pages=6)


def test_second_process_gets_a_clear_message(tmp_path, encoder, sample_pdf):
    db = tmp_path / 'shared.db'
    idx = ColPaliIndex(db, encoder=encoder, pages_dir=tmp_path / 'pages')
    idx.add(sample_pdf, progress=False)
    cli = str(Path(sys.executable).parent / 'colpali-milvus')
    out = subprocess.run([cli, 'info', '--db', str(db)], capture_output=True, text=True, env=_env(), timeout=120)
    assert out.returncode == 2 and 'is open in another process' in out.stderr and 'Traceback' not in out.stderr
    code = (f"from colpali_milvus.index import ColPaliIndex\ntry: ColPaliIndex({str(db)!r})\n"
            "except Exception as e: print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=_env(), timeout=120)
    assert out.stdout.startswith('DatabaseLockedError') and 'milvus-lite server' in out.stdout
    idx.close()  # released: now the other process can open it
    out = subprocess.run([cli, 'info', '--db', str(db)], capture_output=True, text=True, env=_env(), timeout=120)
    assert out.returncode == 0 and '"pages": 6' in out.stdout


def _retry(f, timeout=30.0):
    t0 = time.monotonic()
    while True:
        try: return f()
        except MilvusUnavailableError:
            if time.monotonic() - t0 > timeout: raise
            time.sleep(0.3)


def test_server_goes_away_then_comes_back(tmp_path, encoder, sample_pdf):
    from milvus_servers import start_lite_server
    try: srv = start_lite_server(tmp_path / 'lite')
    except FileNotFoundError as e: pytest.skip(str(e))
    try:
        idx = ColPaliIndex(srv.uri, 'papers', encoder=encoder, pages_dir=tmp_path / 'pages', refresh_s=0, timeout=5)
        idx.add(sample_pdf, progress=False)
        want = idx.search('ColBERT table', k=3)
        srv.stop()
        t0 = time.monotonic()
        with pytest.raises(MilvusUnavailableError, match='retry'): idx.search('ColBERT table', k=3)
        with pytest.raises(MilvusUnavailableError): idx.remove(sample_pdf)
        assert time.monotonic() - t0 < 30
        srv.start()  # same data, same port: the same index object works again
        got = _retry(lambda: idx.search('ColBERT table', k=3))
        assert [(r.page_id, round(r.score, 4)) for r in got] == [(r.page_id, round(r.score, 4)) for r in want]
        assert idx.remove(sample_pdf) == 6 and len(idx) == 0
    finally: srv.stop()
