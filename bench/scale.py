"""Scale benchmark (issue 10): build N pre-encoded ColPali-shaped pages, then a fresh process opens the collection and
answers queries: cold start, client memory, latency and recall@10 against exact MaxSim (a streaming brute force over
every page, computed while building).

    python bench/scale.py --backend lite --pages 10000 --queries 100 --out bench_out/scale
    python bench/scale.py --backend milvus --pages 30000 --queries 100 --out bench_out/scale   # the 2.3.5 standalone

The build runs in this process (its peak RSS is the build's) and writes pages in batches of 64 with `add_pages`; only
the `add_pages` calls are timed (generating the synthetic pages is not). stderr of the build is captured and counted.
The query phase runs in a child process: it imports torch and the package first (timed apart), then times open ->
first answer, then 100 more queries, and reads RssAnon/RssFile from /proc/self/status before opening, after the
first answer and after the last. Results go to <out>/<backend>_<pages>.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent/'tests')]
TOPK = 10

def status()->dict:
    "RssAnon, RssFile, VmHWM of this process in MB."
    out = {}
    for line in open('/proc/self/status'):
        k, _, v = line.partition(':')
        if k in ('RssAnon', 'RssFile', 'VmHWM', 'VmRSS'): out[k] = int(v.split()[0]) / 1024
    return out

def tree_rss_mb(pid:int)->dict:
    "RSS of a process and its children: anonymous and file-backed, MB."
    import psutil
    anon = file = 0
    for p in [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True):
        try:
            for line in open(f'/proc/{p.pid}/status'):
                k, _, v = line.partition(':')
                if k == 'RssAnon': anon += int(v.split()[0])
                if k == 'RssFile': file += int(v.split()[0])
        except OSError: pass
    return {'anon_mb': anon / 1024, 'file_mb': file / 1024}

def du_mb(path)->float:
    return sum(f.stat().st_blocks * 512 for f in Path(path).rglob('*') if f.is_file()) / 2**20

def wait_idle(pid:int, busy:float=15.0, timeout:float=900)->float:
    "Seconds until a server (and its children) use less than `busy`% of a core over 5 s: queries on a 2-core machine"
    "measured while it compacts would measure the compaction."
    import psutil
    t0 = time.time()
    while time.time() - t0 < timeout:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
        for p in procs: p.cpu_percent(None)
        time.sleep(5)
        if sum(p.cpu_percent(None) for p in procs) < busy: break
    return time.time() - t0

def wait_for_indexes(client, names, timeout:float=3600):
    "Wait until the server has indexed every flushed row (queries measured while it builds would measure the build)."
    t0 = time.time()
    while time.time() - t0 < timeout:
        info = [client.describe_index(n, 'vector_index') for n in names]
        if all(int(i.get('pending_index_rows', 0)) == 0 and int(i.get('indexed_rows', 0)) >= int(i.get('total_rows', 0))
               for i in info): return
        time.sleep(2)
    raise TimeoutError(f"indexes not built after {timeout:.0f} s: {info}")

def exact_maxsim(Qt, pages:list)->np.ndarray:
    "Exact float32 MaxSim of queries `Qt` (nq, q, dim) against each page as stored (float16), torch: (nq, pages)."
    import torch
    flat = Qt.reshape(-1, Qt.shape[-1])
    return torch.stack([(flat @ torch.from_numpy(p.astype(np.float16).astype(np.float32)).T)
                        .reshape(len(Qt), Qt.shape[1], -1).amax(2).sum(1) for p in pages], 1).numpy()

def build(a, uri:str, server_pid:int|None)->dict:
    import torch
    from corpus import Corpus

    from colpali_milvus.retriever import MilvusColbertRetriever
    from colpali_milvus.store import close_client, open_client
    c = Corpus(a.pages, a.seed)
    queries = [c.query(j) for j in range(a.queries)]
    Q = np.stack([q for q, _ in queries]).astype(np.float32)
    exact, Qt = np.empty((a.queries, a.pages), np.float32), torch.from_numpy(Q)
    client = open_client(uri)
    r = MilvusColbertRetriever(client, 'scale', shards=a.shards)
    r.create_collection()
    t_add, t0, server_peak = 0.0, time.time(), {}
    for s in range(0, a.pages, 64):
        e = min(s + 64, a.pages)
        batch = c.pages(s, e)
        # every field filled, as the indexing pipeline fills it: Milvus 2.3.5 with mmap cannot load a sealed segment
        # whose VARCHAR column is empty in every row (a zero-length map: "failed to create file-backed map")
        meta = [dict(source=f'/corpus/doc{i // 10:05d}.pdf', page=i % 10 + 1, metadata={'topic': i % 50},
                     image_path=f'/corpus/doc{i // 10:05d}/page-{i % 10 + 1}.png',
                     sha256=hashlib.sha256(v.astype(np.float16).tobytes()).hexdigest())
                for i, v in zip(range(s, e), batch)]
        t = time.time(); r.add_pages(list(range(s, e)), batch, meta); t_add += time.time() - t
        exact[:, s:e] = exact_maxsim(Qt, batch)
        if s // 64 % 25 == 0:
            print(f"  built {e}/{a.pages} pages, {e / t_add:.1f} pages/s (add_pages only), {time.time() - t0:.0f} s",
                  flush=True)
            if server_pid:
                server_peak = max(server_peak, tree_rss_mb(server_pid),
                                  key=lambda d: d.get('anon_mb', 0) + d.get('file_mb', 0))
    t = time.time()
    if r.files is None:
        for n in (r.centroids.name, r.vectors_collection, 'scale'): client.flush(n)
    t_flush = time.time() - t; t = time.time()
    if r.files is None: wait_for_indexes(client, (r.centroids.name, r.vectors_collection, 'scale'))
    t_index = time.time() - t
    top = [list(np.lexsort((np.arange(a.pages), -exact[j]))[:TOPK]) for j in range(a.queries)]
    np.savez(a.work/'truth.npz', queries=Q, top=np.array(top), targets=np.array([t for _, t in queries]))
    st = status()
    close_client(client, uri)
    return dict(pages=a.pages, add_s=t_add, pages_per_s=a.pages / t_add, flush_s=t_flush, index_wait_s=t_index,
                build_wall_s=time.time() - t0,
                build_peak_rss_mb=st['VmHWM'], server_rss_during_build=server_peak or None)

QUERY_CHILD = r'''
import json, sys, time
t = time.time(); import torch, numpy as np; import colpali_milvus.retriever; t_import = time.time() - t
from colpali_milvus.retriever import MilvusColbertRetriever
from colpali_milvus.store import open_client
def st():
    out = {}
    for line in open('/proc/self/status'):
        k, _, v = line.partition(':')
        if k in ('RssAnon', 'RssFile', 'VmHWM'): out[k] = int(v.split()[0]) / 1024
    return out
uri, truth, nq, kw = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
z = np.load(truth); Q, top = z['queries'], z['top']
before = st()
t0 = time.time()
r = MilvusColbertRetriever(open_client(uri), 'scale', **kw)
t_open = time.time() - t0
first = r.search(Q[0], 10); t_first = time.time() - t0
after_first = st()
lat, got = [], [[p for _, p in first]]
for j in range(1, nq + 1):
    q = Q[j % len(Q)]
    t = time.time(); res = r.search(q, 10); lat.append(time.time() - t); got.append([p for _, p in res])
after = st()
from colpali_milvus.store import metadata_expr, sources_expr
filters = {}
for name, expr in (('where topic == 7 (2% of pages)', metadata_expr({'topic': 7})),
                   ('where topic in 3 values (6%)', metadata_expr({'topic': [1, 2, 3]})),
                   ('one source (10 pages)', sources_expr(['/corpus/doc00042.pdf']))):
    t = time.time(); ids = [x['page_id'] for x in r.query_pages(expr)]; t_q = time.time() - t
    ts = []
    for j in range(5):
        t = time.time(); res = r.search_pages(Q[j % len(Q)], 10, page_ids=ids); ts.append(time.time() - t)
        assert all(row['page_id'] in set(ids) for _, row in res)
    filters[name] = dict(matched=len(ids), filter_ms=t_q * 1e3, filtered_search_median_ms=float(np.median(ts) * 1e3))
rec = [len(set(g) & set(top[j % len(Q)].tolist())) / 10 for j, g in enumerate(got)]
print(json.dumps(dict(import_s=t_import, open_s=t_open, open_to_first_answer_s=t_first,
      median_ms=float(np.median(lat)*1e3), p90_ms=float(np.percentile(lat, 90)*1e3), recall_at_10=float(np.mean(rec)),
      n_queries=len(lat), mem_before=before,
      mem_after_first=after_first, mem_after=after, rss_anon_growth_mb=after['RssAnon'] - before['RssAnon'],
      filters=filters)))
'''

def query(a, uri:str, kw:dict)->dict:
    out = subprocess.run([sys.executable, '-c', QUERY_CHILD, uri, str(a.work/'truth.npz'), str(a.n_search),
                          json.dumps(kw)], capture_output=True, text=True, timeout=3600)
    if out.returncode: raise RuntimeError(out.stderr[-3000:])
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res['stderr_lines'] = len([line for line in out.stderr.splitlines() if line.strip()])
    return res

def git_rev()->str:
    return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                          cwd=HERE).stdout.strip()

BULK_BUILD = {   # server settings for one bulk build (Milvus maps env KEY_NAME onto key.name of milvus.yaml)
    'DATACOORD_ENABLECOMPACTION': 'false',       # no merging and re-indexing of segments while pages stream in
    'ROCKSMQ_RETENTIONTIMEINMINUTES': '30',      # the embedded message log: 30 minutes, not 3 days
    'ROCKSMQ_RETENTIONSIZEINMB': '2048',         # and at most 2 GB, not 8
    'DATACOORD_GC_DROPTOLERANCE': '600',         # files of dropped segments deleted after 10 minutes, not 3 hours
    # centroid segments seal at ~2 million rows (~16,000 pages of 128 centroids), not ~230,000: the centroid search
    # runs an HNSW search per segment, so a few large segments answer faster than many small ones. A segment seals
    # at maxSize x sealProportion (1 GB, ~2 million 128-d rows) or at maxBinlogFileNumber binlogs, each a data
    # node's buffer of 16 MB (32,768 rows): 32 of them sealed every 1,048,576 rows. (Blob rows are sealed by the
    # client's flushes, every `FLUSH_CHARS`, whatever this says.)
    'DATACOORD_SEGMENT_MAXSIZE': '4096',
    'DATACOORD_SEGMENT_SEALPROPORTION': '0.25',
    'DATACOORD_SEGMENT_MAXBINLOGFILENUMBER': '64',
}

def start_backend(a)->tuple:
    "The server (None for Lite) and the uri to open."
    if a.backend == 'lite': return None, str(a.work/'scale.db')
    from milvus_servers import start_milvus_standalone
    os.environ['QUERYNODE_MMAPDIRPATH'] = str(a.work/'mmap')   # raw field data memory-mapped, not loaded
    if a.bulk_build: os.environ.update(BULK_BUILD)
    os.environ.update(a.server_env)
    srv = start_milvus_standalone(a.work/'server', timeout=180)   # a restart on kept data waits for old sessions
    return srv, srv.uri

def hold(srv, a):
    "Keep the server up `a.hold` seconds, or until <work>/uri is deleted."
    if not a.hold: return
    (a.work/'uri').write_text(srv.uri)
    print(f"server held at {srv.uri} (pid {srv.proc.pid}); rm {a.work/'uri'} to stop it", flush=True)
    t0 = time.time()
    while time.time() - t0 < a.hold and (a.work/'uri').exists(): time.sleep(2)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--backend', choices=['lite', 'milvus'], default='lite')
    ap.add_argument('--pages', type=int, default=10000)
    ap.add_argument('--queries', type=int, default=20, help='distinct queries (exact top-10 computed for each)')
    ap.add_argument('--n-search', type=int, default=100, help='searches timed after the first')
    ap.add_argument('--shards', type=int, default=1)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', type=Path, default=Path('bench_out/scale'))
    ap.add_argument('--keep', action='store_true', help='keep the database')
    ap.add_argument('--report', action='store_true', help='print the results in --out as a table, and stop')
    ap.add_argument('--reuse', type=Path, help='the work folder of a run made with --keep: query it again, no build')
    ap.add_argument('--uri', help='with --reuse: a server still running on that folder (started by --hold)')
    ap.add_argument('--bulk-build', action='store_true', help='start the server with BULK_BUILD settings')
    ap.add_argument('--server-env', type=json.loads, default={},
                    help='more server settings, as JSON (e.g. \'{"DATACOORD_SEGMENT_MAXSIZE": "1024"}\')')
    ap.add_argument('--kw', type=json.loads, default={},
                    help='retriever arguments for the queries, as JSON (e.g. \'{"hits": 256}\')')
    ap.add_argument('--hold', type=float, default=0,
                    help='keep the server running this many seconds after the queries (its uri in <work>/uri; '
                         'delete that file to stop it sooner)')
    a = ap.parse_args()
    if a.report: print(report(a.out.resolve())); return
    a.out = a.out.resolve()   # the server is started in another folder: its config paths must be absolute
    a.out.mkdir(parents=True, exist_ok=True)
    if a.reuse:   # query again what an earlier run kept: its build numbers are that run's
        a.work = a.reuse.resolve()
        res = json.loads((a.out/f'{a.backend}_{a.pages}.json').read_text())
        res.update(queries=a.queries, n_search=a.n_search, requeried_at_git=git_rev())
        srv, uri = (None, a.uri) if a.uri else start_backend(a)
    else:
        a.work = Path(tempfile.mkdtemp(prefix=f'scale_{a.backend}_{a.pages}_', dir=a.out))
        res = {'backend': a.backend, 'pages': a.pages, 'queries': a.queries, 'n_search': a.n_search,
               'shards': a.shards, 'git': git_rev(), 'bulk_build': a.bulk_build}
        err = a.work/'build.stderr'
        fd = os.dup(2); os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT), 2)   # count what a notebook user would see
        try:
            srv, uri = start_backend(a)
            res['build'] = build(a, uri, srv.proc.pid if srv else None)
        finally:
            os.dup2(fd, 2)
        text = err.read_text(errors='replace')
        res['build']['stderr_lines'] = len([line for line in text.splitlines() if line.strip()])
        res['build']['stderr_tracebacks'] = text.count('Traceback')
        res['build']['stderr_head'] = text[:1500]
        print('build:', json.dumps(res['build'])[:1500], flush=True)
    if srv:
        res['server_idle_wait_s'] = wait_idle(srv.proc.pid)   # compaction and index builds after the flush
        res['server_rss_after_build'] = tree_rss_mb(srv.proc.pid)
    res['query'], res['retriever_kw'] = query(a, uri, a.kw), a.kw
    print('query:', json.dumps(res['query']), flush=True)
    if srv:
        res['server_rss_after_queries'] = tree_rss_mb(srv.proc.pid)
        res['server_rss_per_page_kb'] = {k: v * 1024 / a.pages for k, v in res['server_rss_after_queries'].items()}
        res['disk_mb'] = du_mb(a.work/'server')
    else: res['disk_mb'] = du_mb(a.work/'scale.db')
    (a.out/f'{a.backend}_{a.pages}.json').write_text(json.dumps(res, indent=1))   # before holding: --reuse reads it
    if srv: hold(srv, a); srv.stop()
    print(json.dumps({k: v for k, v in res.items() if k != 'build'}, indent=1))
    if not a.keep and not a.reuse:
        import shutil
        shutil.rmtree(a.work, ignore_errors=True)


def report(out:Path)->str:
    "A markdown table of every result in `out` (python bench/scale.py --report --out DIR)."
    rows = ["| backend | pages | build pages/s | build peak RSS MB | build stderr lines | open → first answer s | "
            "import s | median ms | p90 ms | recall@10 | client RssAnon growth MB | client RssFile MB | "
            "server RSS anon / file MB | disk KB/page |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in sorted(out.glob('*.json'), key=lambda f: (f.stem.split('_')[0], int(f.stem.split('_')[1]))):
        d = json.loads(f.read_text()); b, q = d['build'], d['query']
        srv = d.get('server_rss_after_queries')
        rows.append(f"| {d['backend']} | {d['pages']:,} | {b['pages_per_s']:.0f} | {b['build_peak_rss_mb']:.0f} | "
                    f"{b['stderr_lines']} | {q['open_to_first_answer_s']:.2f} | {q['import_s']:.1f} | "
                    f"{q['median_ms']:.1f} | {q['p90_ms']:.1f} | "
                    f"{q['recall_at_10']:.3f} | {q['rss_anon_growth_mb']:.0f} | {q['mem_after']['RssFile']:.0f} | "
                    + (f"{srv['anon_mb']:.0f} / {srv['file_mb']:.0f}" if srv else 'in process')
                    + f" | {d['disk_mb'] * 1024 / d['pages']:.0f} |")
    filt = [(json.loads(f.read_text()), f) for f in sorted(out.glob('*.json'))]
    lines = [f"- {d['backend']} {d['pages']:,} pages, {name}: {v['matched']} pages matched in {v['filter_ms']:.0f} ms, "
             f"filtered search {v['filtered_search_median_ms']:.1f} ms"
             for d, _ in filt for name, v in (d['query'].get('filters') or {}).items()]
    return '\n'.join(rows + [''] + lines)

if __name__ == '__main__': main()
