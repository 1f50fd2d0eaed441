"""Peak memory and speed of indexing one long PDF (or a folder of PDFs) with the tiny model, a fresh subprocess per
size.

    python bench/stream_memory.py                 # 100- and 500-page PDFs
    python bench/stream_memory.py --pages 500 --chunk 16
    python bench/stream_memory.py --pages 500 --files 50   # a folder of 50 PDFs of 10 pages, in one `add`
    python bench/stream_memory.py --server        # Milvus in its own process (a `milvus-lite server`)

For each size a PDF (or `--files` PDFs in one folder, the pages split evenly) is generated with reportlab (one line of
text per page, US letter), then a subprocess opens a new Milvus Lite database, loads the tiny model (`model='tiny'`),
and runs `ColPaliIndex.add(path)`. It reports the
process's resident memory after loading (baseline), its peak during the run (`ru_maxrss`, which includes Milvus Lite:
it runs inside the process) and at the end, the wall time and pages/s (poppler's short-lived children are not
counted). A bounded job has the same peak for 100 and 500 pages; the tiny model makes the encoder cheap, so this
measures the pipeline around it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent('''
    import json, resource, sys, time, warnings
    warnings.simplefilter('ignore')
    from colpali_milvus.index import ColPaliIndex
    path, db, pages, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    def rss_mb():
        with open('/proc/self/status') as f:
            return next(int(l.split()[1]) for l in f if l.startswith('VmRSS')) / 1024
    idx = ColPaliIndex(db, model='tiny', pages_dir=pages)
    idx.encoder; idx._ensure_collection()
    base = rss_mb()
    t0 = time.perf_counter()
    rep = idx.add(path, chunk=chunk, progress=False)
    dt = time.perf_counter() - t0
    assert len(rep) == len(idx) and rep.ok, (len(rep), len(idx), rep.errors)
    print(json.dumps({'pages': len(rep), 'files': len(rep.indexed), 'seconds': round(dt, 1),
                      'pages_per_s': round(len(rep) / dt, 1), 'baseline_rss_mb': round(base),
                      'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      'end_rss_mb': round(rss_mb())}))
''')


def make_pdf(path, n_pages:int, title:str='Page'):
    "A US-letter PDF of `n_pages` pages, each with its own line of text."
    from reportlab.pdfgen import canvas
    c = canvas.Canvas(str(path), invariant=1)
    for i in range(1, n_pages + 1):
        c.setFont('Helvetica', 14)
        c.drawString(72, 700, f'{title} {i}: ' + 'late interaction retrieval ' * (i % 4 + 1))
        c.showPage()
    c.save()
    return Path(path)


def make_inputs(d:Path, n_pages:int, files:int)->Path:
    "One PDF of `n_pages` pages, or a folder of `files` PDFs sharing them (the first ones one page longer)."
    if files <= 1: return make_pdf(d / f'long-{n_pages}.pdf', n_pages)
    folder = d / 'docs'; folder.mkdir()
    for f in range(files):
        make_pdf(folder / f'doc-{f:03d}.pdf', n_pages // files + (f < n_pages % files), title=f'Document {f} page')
    return folder


def measure(n_pages:int, chunk:int, server:bool=False, files:int=1)->dict:
    with tempfile.TemporaryDirectory() as d:
        path = make_inputs(Path(d), n_pages, files)
        srv, db = None, str(Path(d) / 'm.db')
        if server:   # Milvus in its own process: the child's memory is then the indexing pipeline's alone
            sys.path.insert(0, str(ROOT / 'tests'))
            from milvus_servers import start_lite_server
            srv = start_lite_server(Path(d) / 'server'); db = srv.uri
        env = {**os.environ, 'PYTHONPATH': f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               'HF_HUB_OFFLINE': '1', 'TOKENIZERS_PARALLELISM': 'false',
               'COLPALI_MILVUS_CACHE': os.environ.get('COLPALI_MILVUS_CACHE', str(Path(d) / 'cache'))}
        try:
            out = subprocess.run([sys.executable, '-c', CHILD, str(path), db, str(Path(d) / 'pages'), str(chunk)],
                                 capture_output=True, text=True, env=env)
        finally:
            if srv is not None: srv.stop()
        if out.returncode: sys.exit(f"indexing {n_pages} pages failed:\n{out.stderr[-3000:]}")
        return {'milvus': 'milvus-lite server (own process)' if server else 'Milvus Lite in-process',
                **json.loads(out.stdout.strip().splitlines()[-1])}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--pages', type=int, nargs='+', default=[100, 500])
    p.add_argument('--chunk', type=int, default=16, help='pages rendered, encoded and committed per step')
    p.add_argument('--files', type=int, default=1, help='split the pages over this many PDFs in one folder')
    p.add_argument('--server', action='store_true',
                   help='index into a `milvus-lite server` on 127.0.0.1 (its own process)')
    a = p.parse_args()
    for n in a.pages: print(json.dumps({'chunk': a.chunk, **measure(n, a.chunk, a.server, a.files)}), flush=True)


if __name__ == '__main__': main()
