"""Retrieval benchmark: exact in-memory MaxSim brute force vs the seed notebook's retriever vs colpali_milvus's.

    python bench/run.py --sizes 200,2000,10000 --queries 30 --out bench_out/
    python bench/run.py --sizes 200 --queries 10            # quick run

For each size the pages are generated once (bench/corpus.py) into a float16 .npy in the out dir and reused on later
runs. Each method then runs in its own child process, one after another, so its peak RSS is its own and two methods
never hold big data at the same time:
  exact  holds every page as one float32 (P, 1030, 128) array (the in-memory brute force) + the queries;
  seed   holds one page (float32) at a time while inserting, the queries, and whatever Milvus Lite / the seed class
         hold;
  ours   holds one batch of pages (float32) while inserting, the queries, and whatever Milvus Lite / the retriever hold.
Pages are read with plain file reads (no mmap), so the page cache never counts in a child's RSS.
Writes <out>/results.json (every number) and <out>/results.md (a table per size and the targets).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DIM, NV, TOPK = 128, 1030, 10
T0 = float(os.environ.get('BENCH_T0', time.time()))   # children log on the parent's clock

def log(*a):
    print(f"[{time.time()-T0:8.1f}s]", *a, flush=True)

# ---------------------------------------------------------------------------------------------------------- memory

def proc_status()->dict:
    "VmRSS/VmHWM of this process in MB (VmHWM = peak resident set size)."
    out = {}
    with open('/proc/self/status') as f:
        for line in f:
            k, _, v = line.partition(':')
            if k in ('VmRSS', 'VmHWM'): out[k] = int(v.split()[0]) / 1024
    return out

def children_rss_mb()->float:
    "Resident memory of live child processes (Milvus Lite 3 runs in-process, so normally 0)."
    try:
        import psutil
        return sum(c.memory_info().rss for c in psutil.Process().children(recursive=True)) / 2**20
    except Exception: return 0.0

def du_bytes(path:Path)->dict:
    "Disk use of a file or directory tree: allocated (like `du`) and apparent bytes."
    alloc = apparent = 0
    paths = [path] if path.is_file() else [Path(r)/f for r, _, fs in os.walk(path) for f in fs]
    for p in paths:
        try: st = p.lstat()
        except FileNotFoundError: continue
        alloc += st.st_blocks * 512; apparent += st.st_size
    return {'du': alloc, 'apparent': apparent}

# ------------------------------------------------------------------------------------------------------ corpus cache

def corpus_sha()->str: return hashlib.sha256((HERE/'corpus.py').read_bytes()).hexdigest()[:16]

def cache_paths(out:Path, n:int, seed:int)->tuple[Path, Path, Path]:
    d = out/'corpus'
    return d/f'pages_{n}_s{seed}.f16.npy', d/f'pages_{n}_s{seed}.json', d/f'queries_{n}_s{seed}.npz'

def ensure_corpus(out:Path, n:int, seed:int, n_queries:int):
    "Generate (or reuse) pages and queries for size n; runs in its own child."
    pages_p, meta_p, q_p = cache_paths(out, n, seed)
    pages_p.parent.mkdir(parents=True, exist_ok=True)
    sha = corpus_sha()
    want = {'n_pages': n, 'seed': seed, 'shape': [n, NV, DIM], 'dtype': 'float16', 'corpus_py': sha}
    pages_ok = meta_p.exists() and json.loads(meta_p.read_text()) == want and pages_p.exists()
    q_ok = False
    if q_p.exists():
        z = np.load(q_p)
        q_ok = str(z['corpus_py']) == sha and len(z['targets']) >= n_queries
    if pages_ok and q_ok: log(f"corpus {n} pages: cached ({pages_p})"); return
    sys.path.insert(0, str(HERE))
    from corpus import Corpus
    c = Corpus(n, seed)
    if not q_ok:
        qs = [c.query(j) for j in range(n_queries)]
        np.savez(q_p, queries=np.stack([q for q, _ in qs]).astype(np.float32),
                 targets=np.array([t for _, t in qs]), corpus_py=sha)
        log(f"corpus {n}: {n_queries} queries written")
    if pages_ok: return
    meta_p.unlink(missing_ok=True)
    t = time.time(); last = t
    mm = np.lib.format.open_memmap(pages_p, mode='w+', dtype=np.float16, shape=(n, NV, DIM))
    for i in range(n):
        p = c.page(i)
        if p.shape != (NV, DIM): raise ValueError(f"corpus.py page {i} has shape {p.shape}, expected {(NV, DIM)}")
        mm[i] = p
        if time.time() - last > 10:
            last = time.time(); log(f"  generating {n}-page corpus: {i+1}/{n} pages, {last-t:.0f}s")
    mm.flush(); del mm
    meta_p.write_text(json.dumps(want))
    log(f"corpus {n} pages generated in {time.time()-t:.1f}s -> {pages_p} ({pages_p.stat().st_size/2**30:.2f} GiB)")

class Pages:
    "Read-only access to the cached float16 pages with ordinary reads (float32 out)."
    def __init__(self, path:Path):
        self.path = path
        mm = np.load(path, mmap_mode='r')   # only to read the header: no page is touched through the map
        assert mm.dtype == np.float16 and mm.shape[1:] == (NV, DIM) and mm.flags.c_contiguous, (mm.shape, mm.dtype)
        self.n, self.offset = mm.shape[0], mm.offset
        del mm
    def read(self, a:int, b:int, out:np.ndarray|None=None)->np.ndarray:
        "Pages a..b-1 as float32 (b-a, 1030, 128)."
        with open(self.path, 'rb') as f:
            f.seek(self.offset + a * NV * DIM * 2)
            x = np.fromfile(f, dtype=np.float16, count=(b - a) * NV * DIM).reshape(b - a, NV, DIM)
        if out is None: return x.astype(np.float32)
        out[...] = x; return out

def load_queries(out:Path, n:int, seed:int, nq:int):
    z = np.load(cache_paths(out, n, seed)[2])
    return z['queries'][:nq], z['targets'][:nq]

class Progress:
    "Prints a progress line at most every `every` seconds."
    def __init__(self, what, total, every=15.0):
        self.what, self.total, self.every, self.t0 = what, total, every, time.time(); self.last = self.t0
    def __call__(self, done):
        now = time.time()
        if now - self.last < self.every and done < self.total: return
        self.last = now; el = now - self.t0; rate = done / el if el else 0
        eta = (self.total - done) / rate if rate else float('nan')
        log(f"  {self.what}: {done}/{self.total} ({el:.0f}s, {rate:.1f}/s, ETA {eta:.0f}s)")

# ---------------------------------------------------------------------------------------------------------- children

def brute_scores(stack:np.ndarray, q:np.ndarray, chunk:int=16)->np.ndarray:
    "Exact MaxSim of q (nq, d) against every page of stack (P, NV, d), fp32, chunked matmul."
    # (nq, chunk*NV) orientation: the max runs along contiguous memory; ~1.7x faster than (chunk*NV, nq) here
    s = np.empty(len(stack), np.float32)
    for a in range(0, len(stack), chunk):
        d = stack[a:a+chunk]
        s[a:a+chunk] = (q @ d.reshape(-1, DIM).T).reshape(len(q), len(d), NV).max(2).sum(0)
    return s

def topk_ids(scores:np.ndarray, k:int=TOPK)->list[int]:
    return [int(i) for i in np.lexsort((np.arange(len(scores)), -scores))[:k]]

def other_brute_forces(stack:np.ndarray, queries:np.ndarray, tops:list, n:int)->dict:
    """Median ms per query of the brute forces a user would pick, each checked against the numpy top-10
    (first n queries)."""
    import torch

    from colpali_milvus.core import cpu_has_fast_bf16
    out = {}
    flat = torch.from_numpy(stack.reshape(-1, DIM))
    def timed(name, fn):
        lat, agree = [], []
        for j, q in enumerate(queries[:n]):
            t = time.time(); sc = fn(q); lat.append(time.time() - t)
            agree.append(len(set(topk_ids(np.asarray(sc, np.float32))) & set(tops[j])) / TOPK)
        ms = [x * 1e3 for x in (lat[1:] or lat)]
        out[name] = dict(median_ms=float(np.median(ms)), latencies_ms=ms, top10_agreement=float(np.mean(agree)))
        log(f"brute force {name} @ {len(stack)}: {out[name]['median_ms']:.1f} ms/query "
            f"(top-10 agreement {np.mean(agree):.3f})")
    def flat_maxsim(m):
        def fn(q):
            tq = torch.from_numpy(q).to(m.dtype)
            return (tq @ m.T).float().view(len(q), len(stack), NV).amax(2).sum(0).numpy()
        return fn
    timed('torch float32 (one product)', flat_maxsim(flat))
    if cpu_has_fast_bf16():
        timed('torch bfloat16 (one product)', flat_maxsim(flat.bfloat16()))
    from colpali_engine.utils.processing_utils import BaseVisualRetrieverProcessor
    pages = list(torch.from_numpy(stack))
    timed('colpali-engine score_multi_vector (float32)',
          lambda q: BaseVisualRetrieverProcessor.score_multi_vector([torch.from_numpy(q)], pages,
                                                                    batch_size=256)[0].numpy())
    return out

def child_exact(a)->dict:
    pages = Pages(cache_paths(a.out, a.size, a.seed)[0])
    queries, targets = load_queries(a.out, a.size, a.seed, a.queries)
    base = proc_status()
    log(f"exact {a.size}: stacking {a.size} pages into float32 ({a.size*NV*DIM*4/2**30:.2f} GiB)")
    t = time.time()
    stack = np.empty((a.size, NV, DIM), np.float32)
    prog = Progress(f"exact {a.size} stacking", a.size)
    for s in range(0, a.size, 256):
        e = min(s + 256, a.size); pages.read(s, e, out=stack[s:e]); prog(e)
    build = time.time() - t
    lat, tops, all_scores = [], [], np.empty((len(queries), a.size), np.float32)
    prog = Progress(f"exact {a.size} queries", len(queries))
    for j, q in enumerate(queries):
        t = time.time(); sc = brute_scores(stack, q); tops.append(topk_ids(sc)); lat.append(time.time() - t)
        all_scores[j] = sc; prog(j + 1)
    # cross-check the brute force against the package's reference maxsim on a slice
    from colpali_milvus.maxsim import maxsim
    m = min(64, a.size)
    ref = maxsim(queries[0], stack[:m])
    check = float(np.abs(ref - all_scores[0, :m]).max())
    assert check < 1e-3, f"brute force disagrees with colpali_milvus.maxsim.maxsim by {check}"
    np.savez(a.out/'results'/f'exact_scores_{a.size}.npz', scores=all_scores, top=np.array(tops))
    brutes = other_brute_forces(stack, queries, tops, a.brute_queries)
    st = proc_status()
    return dict(method='exact',
                holds=f"all {a.size} pages as one float32 array ({stack.nbytes/2**20:.0f} MB) + queries",
                build_s=build, first_search_s=lat[0], insert_s=build, latencies_ms=[x*1e3 for x in (lat[1:] or lat)],
                timed_from=1, top=tops, peak_rss_mb=st['VmHWM'], base_rss_mb=base['VmRSS'],
                children_rss_mb=children_rss_mb(),
                disk=None, n_queries=len(queries), maxsim_crosscheck_maxabs=check, brute_forces=brutes,
                exact_top1_is_target=float(np.mean([t[0] == g for t, g in zip(tops, targets)])),
                target_in_exact_top10=float(np.mean([g in t for t, g in zip(tops, targets)])))

def fresh_dir(p:Path):
    if p.exists(): shutil.rmtree(p)
    p.mkdir(parents=True)

def child_seed(a)->dict:
    import seed_retriever
    from pymilvus import MilvusClient
    from seed_retriever import MilvusColbertRetriever
    pages = Pages(cache_paths(a.out, a.size, a.seed)[0])
    nq = min(a.queries, a.seed_queries if a.size > 200 else a.queries)
    queries, _ = load_queries(a.out, a.size, a.seed, nq)
    d = a.out/'db'/f'seed_{a.size}'; fresh_dir(d); db = str(d/'milvus.db')
    base = proc_status()
    t0 = time.time()
    client = MilvusClient(uri=db)                # the notebook: client = MilvusClient(uri="milvus.db")
    seed_retriever.client = client               # the seed's search() reads the notebook's global `client`
    r = MilvusColbertRetriever(collection_name='colpali', milvus_client=client)
    r.create_collection(); r.create_index()      # the notebook's order: index first, then inserts
    t_create = time.time() - t0
    prog = Progress(f"seed {a.size} inserting pages", a.size)
    t = time.time()
    for s in range(0, a.size, 64):
        e = min(s + 64, a.size); batch = pages.read(s, e)
        for i in range(s, e): r.insert({'colbert_vecs': batch[i - s], 'doc_id': i, 'filepath': f'page_{i}.png'})
        del batch; prog(e)
    t_insert = time.time() - t
    t_flush = None
    if not a.seed_no_flush:
        # Not in the notebook: without a flush the freshly inserted rows stay in Milvus Lite's memtable, where each of
        # the seed's per-page `query(filter="doc_id in [..]")` calls takes ~5x longer (first search > 10 min at 200
        # pages). Flushing makes the seed faster, so every ratio against it is conservative. --seed-no-flush measures
        # it literally.
        t = time.time(); client.flush(collection_name='colpali'); t_flush = time.time() - t
    log(f"seed {a.size}: inserted in {t_insert:.1f}s"
        + (f", flushed in {t_flush:.1f}s" if t_flush is not None else ", no flush")
        + "; first search (warm-up) ...")
    tops, lat = [], []
    q_t0 = time.time()
    t = time.time(); res = r.search(queries[0], topk=TOPK); first = time.time() - t
    tops.append([int(p) for _, p in res]); build = time.time() - t0
    log(f"seed {a.size}: first search {first:.1f}s, build {build:.1f}s")
    stopped = None
    for j in range(1, nq):
        spent = time.time() - q_t0; per_q = float(np.mean(lat)) if lat else first
        if spent + per_q > a.seed_query_budget_s:
            stopped = (f"seed query budget (--seed-query-budget-s {a.seed_query_budget_s:.0f}) reached: "
                       f"{j} of {nq} queries run "
                       f"({j-1} timed after the warm-up; {spent:.0f}s spent, next one expected to take {per_q:.0f}s)")
            log(f"seed {a.size}: {stopped}"); break
        t = time.time(); res = r.search(queries[j], topk=TOPK); lat.append(time.time() - t)
        tops.append([int(p) for _, p in res])
        log(f"  seed {a.size} query {j}/{nq-1}: {lat[-1]:.1f}s")
    lat_note = None
    if not lat:
        lat = [first]
        lat_note = "no query fitted the budget after the warm-up: its median latency is the warm-up query's"
    st = proc_status(); ch = children_rss_mb()
    client.close()
    from milvus_lite.server_manager import server_manager_instance
    server_manager_instance.release_server(str(Path(db).absolute()))
    disk = du_bytes(d)
    return dict(method='seed',
                holds="64 pages float32 at a time while inserting (34 MB) + queries + Milvus Lite in-process",
                build_s=build, create_s=t_create, insert_s=t_insert, flush_s=t_flush, first_search_s=first,
                latency_note=lat_note, latencies_ms=[x*1e3 for x in lat], timed_from=1, top=tops, n_queries=len(tops),
                query_budget_note=stopped,
                peak_rss_mb=st['VmHWM'], base_rss_mb=base['VmRSS'], children_rss_mb=ch, disk=disk, db=str(d))

def child_ours(a)->dict:
    from colpali_milvus.retriever import MilvusColbertRetriever
    from colpali_milvus.store import close_client, open_client
    kw = json.loads(a.ours_kwargs or '{}')
    pages = Pages(cache_paths(a.out, a.size, a.seed)[0])
    queries, _ = load_queries(a.out, a.size, a.seed, a.queries)
    d = a.out/'db'/(a.db_name or f'ours_{a.size}'); db = str(d/'bench.db')
    reuse = a.reuse_db
    if not reuse: fresh_dir(d)
    base = proc_status()
    t0 = time.time()
    client = open_client(db)
    r = MilvusColbertRetriever(client, 'bench', **kw)
    t_create = t_insert = None; batch_api = hasattr(r, 'add_pages')
    if not reuse:
        r.create_collection(); t_create = time.time() - t0
        prog = Progress(f"ours {a.size} inserting pages" + (" (add_pages)" if batch_api else " (add_page)"), a.size)
        t = time.time()
        for s in range(0, a.size, a.batch_pages):
            e = min(s + a.batch_pages, a.size); batch = pages.read(s, e)
            if batch_api: r.add_pages(list(range(s, e)), list(batch))
            else:
                for i in range(s, e): r.add_page(i, batch[i - s])
            del batch; prog(e)
        t_insert = time.time() - t
        log(f"ours {a.size}: inserted in {t_insert:.1f}s; first search (warm-up) ...")
    tops, lat = [], []
    t = time.time(); res = r.search(queries[0], topk=TOPK); first = time.time() - t
    tops.append([int(p) for _, p in res]); build = time.time() - t0
    log(f"ours {a.size}{' '+a.ours_kwargs if a.ours_kwargs else ''}: first search {first*1e3:.0f} ms, "
        f"{'open+first search' if reuse else 'build'} {build:.1f}s")
    prog = Progress(f"ours {a.size} queries", len(queries) - 1)
    for j in range(1, len(queries)):
        t = time.time(); res = r.search(queries[j], topk=TOPK); lat.append(time.time() - t)
        tops.append([int(p) for _, p in res]); prog(j)
    st = proc_status(); ch = children_rss_mb()
    close_client(client, db)
    disk = du_bytes(d)
    return dict(method='ours', kwargs=kw, reused_db=reuse, insert_api='add_pages' if batch_api else 'add_page',
                holds=("the queries + Milvus Lite in-process + the retriever's own caches (database reused, no inserts)"
                       if reuse else f"{a.batch_pages} pages float32 at a time while inserting "
                       f"({a.batch_pages*NV*DIM*4/2**20:.0f} MB) + queries + Milvus Lite in-process "
                       "+ the retriever's own caches"),
                build_s=None if reuse else build, open_s=build if reuse else None, create_s=t_create, insert_s=t_insert,
                first_search_s=first, latencies_ms=[x*1e3 for x in lat], timed_from=1, top=tops, n_queries=len(tops),
                peak_rss_mb=st['VmHWM'], base_rss_mb=base['VmRSS'], children_rss_mb=ch, disk=disk, db=str(d))

# ---------------------------------------------------------------------------------------------------------- parent

def run_child(a, method:str, size:int, extra:list=(), tag:str='')->dict|None:
    out_json = a.out/'results'/f'{method}_{size}{tag}.json'
    out_json.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), '--child', method, '--size', str(size), '--out', str(a.out),
           '--queries', str(a.queries), '--seed', str(a.seed), '--seed-queries', str(a.seed_queries),
           '--seed-query-budget-s', str(a.seed_query_budget_s), '--batch-pages', str(a.batch_pages),
           '--brute-queries', str(a.brute_queries),
           *(['--seed-no-flush'] if a.seed_no_flush else []),
           '--child-json', str(out_json), *extra]
    env = dict(os.environ, BENCH_T0=str(T0),
               PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get('PYTHONPATH', '')]))
    t = time.time()
    log(f"--- {method}{tag} @ {size} pages: child starts")
    try: rc = subprocess.run(cmd, env=env, timeout=a.child_timeout_s or None).returncode
    except subprocess.TimeoutExpired: rc = 'timeout'
    wall = time.time() - t
    if rc != 0 or not out_json.exists():
        log(f"--- {method}{tag} @ {size}: FAILED (exit {rc}) after {wall:.0f}s")
        return dict(method=method, failed=f"child exit {rc} after {wall:.0f}s", child_wall_s=wall)
    r = json.loads(out_json.read_text()); r['child_wall_s'] = wall
    log(f"--- {method}{tag} @ {size}: done in {wall:.1f}s (peak RSS {r['peak_rss_mb']:.0f} MB)")
    return r

def summarize(r:dict, exact:dict|None, size:int):
    "Add median latency and recall@10 vs exact to a child's result."
    if r.get('failed') or r.get('skipped'): return r
    lat = r['latencies_ms']
    r['median_ms'] = float(np.median(lat)) if lat else None
    if exact and r['method'] != 'exact':
        et = exact['top']
        rec = [len(set(t[:TOPK]) & set(et[j])) / TOPK for j, t in enumerate(r['top'])]
        r['recall_per_query'] = rec; r['recall@10'] = float(np.mean(rec))
    elif r['method'] == 'exact': r['recall@10'] = 1.0
    r['rss_per_page_kb'] = r['peak_rss_mb'] * 1024 / size
    r['delta_rss_per_page_kb'] = (r['peak_rss_mb'] - r['base_rss_mb']) * 1024 / size
    r['disk_per_page_kb'] = r['disk']['du'] / 1024 / size if r.get('disk') else None
    return r

def project_seed(measured:dict, size:int, base_size:int)->dict:
    "Seed numbers for a size it was not run at, scaled linearly in pages from a measured run (a lower bound)."
    f = size / base_size
    build = (measured['create_s']
             + (measured['insert_s'] + (measured.get('flush_s') or 0) + measured['first_search_s']) * f)
    return dict(method='seed', skipped=True, projected_from=base_size,
                build_s=build, median_ms=(measured['median_ms'] or measured['first_search_s'] * 1e3) * f,
                # RSS: assume the seed's peak does not grow with the corpus (a lower bound, so conservative for targets)
                rss_per_page_kb=measured['peak_rss_mb'] * 1024 / size, delta_rss_per_page_kb=None,
                disk_per_page_kb=measured['disk_per_page_kb'])

def earlier_seed(a):
    "The largest seed result left in <out>/results by an earlier run (to project from when this run measured none)."
    best = None
    for f in (a.out/'results').glob('seed_*.json'):
        try: r = json.loads(f.read_text()); n = int(r['size'])
        except Exception: continue
        if r.get('failed') or n > a.seed_max_pages or (best and best[0] >= n): continue
        r = summarize(r, None, n); r['earlier_run'] = True; best = (n, r)
    if best: log(f"seed: no seed run in this invocation; projecting from an earlier {best[0]}-page seed result")
    return best

def fmt(x, spec='.1f', pre=''):
    return 'n/a' if x is None else pre + format(x, spec)

def table(size:int, res:dict)->str:
    ex, sd = res.get('exact'), res.get('seed')
    rows = [res.get('exact'), sd] + [res.get('ours')] + res.get('sweep', [])
    h = ("| method | build s | build ratio vs seed | median query ms | latency ratio (exact ms / ms) | recall@10 | "
         "peak RSS MB | RSS per page KB | disk per page KB | disk ratio vs seed | first search s | ΔRSS per page KB "
         "| queries |")
    lines = [f"### {size} pages", '', h, '|' + '---|' * (h.count('|') - 1)]
    for r in rows:
        if not r: continue
        name = r['method'] + (f" {json.dumps(r['kwargs'])}" if r.get('kwargs') else '')
        if r.get('failed'): lines.append(f"| {name} | FAILED: {r['failed']} |" + ' |' * 12); continue
        proj = '~' if r.get('skipped') else ''
        vs_seed = '~' if sd and sd.get('skipped') else ''   # ratios against a projected seed are projections too
        if r.get('skipped'):
            name += f" (NOT RUN: projected from {r.get('projected_label', str(r['projected_from']) + ' pages')})"
        seed_build = sd.get('build_s') if sd and not sd.get('failed') else None
        b = r.get('build_s')
        br = (seed_build / b) if (seed_build and b and r is not sd) else (1.0 if r is sd and b else None)
        lr = (ex['median_ms'] / r['median_ms']) if ex and r.get('median_ms') else None
        seed_disk = sd.get('disk_per_page_kb') if sd and not sd.get('failed') else None
        dr = (r['disk_per_page_kb'] / seed_disk) if (seed_disk and r.get('disk_per_page_kb') is not None) else None
        if r.get('reused_db'): b_s, br_s = f"(reused; open {fmt(r.get('open_s'))})", 'n/a'
        else: b_s, br_s = fmt(b, '.2f', proj), fmt(br, '.1f', vs_seed) + ('×' if br else '')
        lines.append('| ' + ' | '.join([
            name, b_s, br_s, fmt(r.get('median_ms'), '.1f', proj), fmt(lr, '.2f', proj) + ('×' if lr else ''),
            fmt(r.get('recall@10'), '.3f'), fmt(r.get('peak_rss_mb'), '.0f'),
            fmt(r.get('rss_per_page_kb'), '.0f', proj),
            'n/a (in memory)' if r['method'] == 'exact' else fmt(r.get('disk_per_page_kb'), '.0f', proj),
            fmt(dr, '.2f', vs_seed), fmt(r.get('first_search_s'), '.2f'),
            fmt(r.get('delta_rss_per_page_kb'), '.0f', proj),
            str(r.get('n_queries', 'n/a'))]) + ' |')
    lines.append('')
    seen = set()
    for r in rows:
        if r and r.get('holds') and (r['method'], r['holds']) not in seen:
            seen.add((r['method'], r['holds'])); lines.append(f"- {r['method']} child holds: {r['holds']}.")
        if r and r.get('query_budget_note'): lines.append(f"- seed: {r['query_budget_note']}.")
        if r and r.get('latency_note'): lines.append(f"- seed: {r['latency_note']}.")
        if r and r['method'] == 'seed' and not r.get('skipped') and not r.get('failed'):
            lines.append(f"- seed build = create {r['create_s']:.1f}s + inserts {r['insert_s']:.1f}s + "
                         + (f"flush {r['flush_s']:.1f}s (added by the bench, not in the notebook) + "
                            if r.get('flush_s') is not None else '')
                         + f"first search {r['first_search_s']:.1f}s.")
        if r and r['method'] == 'ours' and not r.get('failed') and not r.get('reused_db'):
            lines.append(f"- ours{' ' + json.dumps(r['kwargs']) if r.get('kwargs') else ''} build = "
                         f"open+create {r['create_s']:.1f}s + "
                         f"inserts ({r['insert_api']}) {r['insert_s']:.1f}s + "
                         f"first search {r['first_search_s']:.2f}s.")
        if r and r.get('skipped'):
            lines.append(f"- seed NOT RUN at {size} pages: {r['why']}. Projection: build and query "
                         "time scaled linearly in pages from "
                         f"{r.get('projected_label', 'the ' + str(r['projected_from']) + '-page run')} "
                         "(a lower bound: every seed rerank fetch filters the whole collection); "
                         "disk per page copied from that run; peak RSS assumed not to grow "
                         "(lower bound), i.e. that run's peak / pages.")
    walls = [f"{x['method']}{' ' + json.dumps(x['kwargs']) if x.get('kwargs') else ''} {x['child_wall_s']:.0f}s"
             for x in rows if x and x.get('child_wall_s') is not None]
    lines.append(f"- wall time: corpus (generate or load cache) {res.get('corpus_s', 0):.0f}s; "
                 + '; '.join(walls) + '.')
    if ex and ex.get('exact_top1_is_target') is not None:
        lines.append(f"- corpus sanity: exact top-1 is the query's target page in {ex['exact_top1_is_target']:.0%} "
                     "of queries "
                     f"(in top-10: {ex['target_in_exact_top10']:.0%}).")
    return '\n'.join(lines)

def targets(res:dict)->list[str]:
    out = []
    def ok(b): return 'MET' if b else 'NOT MET'
    ours = {n: r['ours'] for n, r in res.items() if r.get('ours') and not r['ours'].get('failed')}
    if ours:
        recs = {n: o.get('recall@10') for n, o in ours.items()}
        s = ', '.join(f"{n}: {v:.3f}" for n, v in recs.items() if v is not None)
        missing = [n for n in (200, 2000, 10000) if n not in ours]
        verdict = ('NOT EVALUATED (no exact run)' if any(v is None for v in recs.values())
                   else ok(all(v >= 0.99 for v in recs.values())))
        out.append(f"- recall@10 ≥ 0.99 at every size: {verdict} ({s})"
                   + (f"; sizes not run: {missing}" if missing else ''))
    else: out.append("- recall@10 ≥ 0.99 at every size: NOT EVALUATED (ours did not run)")
    for n, need in ((200, 1.5), (2000, 8.0), (10000, 8.0)):   # against the fastest brute force of the same run
        r = res.get(n, {}); o, e = r.get('ours'), r.get('exact')
        if not (o and e and o.get('median_ms')):
            out.append(f"- ≥{need}× faster than the fastest brute force at {n} pages: NOT EVALUATED"); continue
        bf = {'numpy float32': e['median_ms'], **{k: v['median_ms'] for k, v in (e.get('brute_forces') or {}).items()}}
        name = min(bf, key=bf.get); x = bf[name] / o['median_ms']
        out.append(f"- ≥{need}× faster than the fastest brute force at {n} pages: {ok(x >= need)} "
                   f"(ours {o['median_ms']:.1f} ms vs {name} {bf[name]:.1f} ms = {x:.2f}×; all: "
                   + ', '.join(f"{k} {v:.1f} ms" for k, v in bf.items()) + ")")
    for n, need, what in ():
        r = res.get(n, {}); o, e = r.get('ours'), r.get('exact')
        if o and e and o.get('median_ms') and e.get('median_ms'):
            x = e['median_ms'] / o['median_ms']
            out.append(f"- {what}: {ok(x >= need)} (ours {o['median_ms']:.1f} ms vs brute force "
                       f"{e['median_ms']:.1f} ms = {x:.2f}×)")
        else: out.append(f"- {what}: NOT EVALUATED ({n} pages not run)")
    for key, name, need, cmp in (('build_s', 'build ≥10× faster than seed', 10.0, 'ratio'),
                                 ('rss_per_page_kb', 'peak RSS per page ≤ ½ of seed', 0.5, 'frac'),
                                 ('disk_per_page_kb', 'disk per page ≤ ½ of seed', 0.5, 'frac')):
        meas, proj = [], []
        for n, r in res.items():
            o, s = r.get('ours'), r.get('seed')
            if not o or not s or o.get('failed') or s.get('failed') or o.get(key) is None or s.get(key) is None:
                continue
            v = s[key] / o[key] if cmp == 'ratio' else o[key] / s[key]
            good = v >= need if cmp == 'ratio' else v <= need
            txt = (f"{n}: seed {s[key]:.1f} / ours {o[key]:.1f} = {v:.1f}×" if cmp == 'ratio'
                   else f"{n}: ours {o[key]:.0f} KB vs seed {s[key]:.0f} KB = {v:.2f}")
            (proj if s.get('skipped') else meas).append((good, txt))
        if meas:
            out.append(f"- {name}: {ok(all(g for g, _ in meas))} (measured: {'; '.join(t for _, t in meas)})"
                       + (f"; against projected seed numbers: "
                          f"{'; '.join(t + (' ok' if g else ' NOT ok') for g, t in proj)}" if proj else ''))
        else: out.append(f"- {name}: NOT EVALUATED (no size with both seed and ours measured)"
                         + (f"; against projected seed numbers: "
                            f"{'; '.join(t + (' ok' if g else ' NOT ok') for g, t in proj)}" if proj else ''))
    return out

def default_sweep()->list[dict]:
    """A few settings of the retriever's parameters that exist in its constructor today
    (one parameter changed at a time)."""
    import inspect

    from colpali_milvus.retriever import MilvusColbertRetriever
    params = inspect.signature(MilvusColbertRetriever.__init__).parameters
    search_time = {'n_candidates': [25, 50, 200, 400], 'hits_per_vector': [16, 32, 128]}   # reuse the built database
    build_time = {'pool': [48, 192]}                                                       # need a rebuild
    return ([{k: v} for k, vs in search_time.items() if k in params for v in vs] +
            [{k: v, '_rebuild': True} for k, vs in build_time.items() if k in params for v in vs])

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--sizes', default='200,2000,10000', help='comma-separated page counts')
    ap.add_argument('--queries', type=int, default=30, help='queries per size (the first is the warm-up)')
    ap.add_argument('--out', type=Path, default=Path('bench_out'))
    ap.add_argument('--seed', type=int, default=0, help='corpus seed')
    ap.add_argument('--brute-queries', type=int, default=6,
                    help='queries timed for each extra brute force (torch, colpali-engine)')
    ap.add_argument('--methods', default='exact,seed,ours',
                    help='subset of exact,seed,ours (exact is needed for recall)')
    ap.add_argument('--seed-max-pages', type=int, default=200,
                    help='run the seed only up to this size; larger: projected')
    ap.add_argument('--seed-queries', type=int, default=5, help='queries for the seed above 200 pages')
    ap.add_argument('--seed-query-budget-s', type=float, default=240.0,
                    help='seconds of seed searching (warm-up included) after which no further seed query is started')
    ap.add_argument('--seed-no-flush', action='store_true',
                    help="measure the seed literally as the notebook runs it (no flush after the inserts; very slow)")
    ap.add_argument('--ours-kwargs', default='', help='JSON dict passed to MilvusColbertRetriever(...)')
    ap.add_argument('--sweep', action='store_true', help='also time a few retriever settings on the built database')
    ap.add_argument('--sweep-kwargs', default='', help='JSON list of kwargs dicts for --sweep (default: a small grid); '
                    'a dict with "_rebuild": true rebuilds the database instead of reusing it')
    ap.add_argument('--sweep-rebuild-max-pages', type=int, default=2000,
                    help='sweep settings that need a rebuild run only up to this size')
    ap.add_argument('--batch-pages', type=int, default=64, help='pages read (and given to add_pages) per batch')
    ap.add_argument('--child-timeout-s', type=float, default=0,
                    help='kill a child after this many seconds (0: no limit)')
    ap.add_argument('--keep-dbs', action='store_true', help='keep the Milvus databases under <out>/db')
    ap.add_argument('--child', help=argparse.SUPPRESS); ap.add_argument('--size', type=int, help=argparse.SUPPRESS)
    ap.add_argument('--child-json', type=Path, help=argparse.SUPPRESS)
    ap.add_argument('--reuse-db', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--db-name', help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.out = a.out.resolve()

    if a.child:
        sys.path.insert(0, str(HERE))
        fn = {'corpus': None, 'exact': child_exact, 'seed': child_seed, 'ours': child_ours}[a.child]
        if fn is None: ensure_corpus(a.out, a.size, a.seed, a.queries); return
        r = fn(a); r['size'] = a.size
        a.child_json.write_text(json.dumps(r)); return

    sizes = [int(s) for s in a.sizes.split(',') if s.strip()]
    methods = [m.strip() for m in a.methods.split(',')]
    (a.out/'results').mkdir(parents=True, exist_ok=True)
    import milvus_lite
    import pymilvus
    env = dict(python=platform.python_version(), numpy=np.__version__, pymilvus=pymilvus.__version__,
               milvus_lite=getattr(milvus_lite, '__version__', '?'), cpus=os.cpu_count(),
               mem_gb=round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30, 1),
               machine=platform.platform())
    git = subprocess.run(['git', '-C', str(HERE.parent), 'describe', '--always', '--dirty'],
                         capture_output=True, text=True).stdout.strip()
    import colpali_milvus.retriever as _ret
    env['retriever_py_sha256'] = hashlib.sha256(Path(_ret.__file__).read_bytes()).hexdigest()[:16]
    log(f"bench: sizes {sizes}, {a.queries} queries, methods {methods}, out {a.out}; {env}")
    sweep = json.loads(a.sweep_kwargs) if a.sweep_kwargs else (default_sweep() if a.sweep else [])
    res, seed_ref = {}, None
    for n in sizes:
        log(f"=== {n} pages ===")
        t = time.time()
        subprocess.run([sys.executable, str(Path(__file__).resolve()), '--child', 'corpus', '--size', str(n),
                        '--out', str(a.out), '--queries', str(a.queries), '--seed', str(a.seed)],
                       check=True, env=dict(os.environ, BENCH_T0=str(T0)))
        r = res[n] = {'corpus_s': time.time() - t}
        if 'exact' in methods: r['exact'] = summarize(run_child(a, 'exact', n), None, n)
        ex = r.get('exact') if r.get('exact') and not r['exact'].get('failed') else None
        if ex is None: log("WARNING: no exact results: recall cannot be computed")
        if 'seed' in methods:
            if n <= a.seed_max_pages:
                r['seed'] = summarize(run_child(a, 'seed', n), ex, n)
                if not r['seed'].get('failed'): seed_ref = (n, r['seed'])
            elif seed_ref or (seed_ref := earlier_seed(a)):
                r['seed'] = project_seed(seed_ref[1], n, seed_ref[0])
                if seed_ref[1].get('earlier_run'):
                    r['seed']['projected_label'] = f"an earlier run's {seed_ref[0]}-page seed result"
                r['seed']['why'] = f"{n} pages > --seed-max-pages {a.seed_max_pages}"
                log(f"seed @ {n}: SKIPPED ({r['seed']['why']}); projected from the {seed_ref[0]}-page run: "
                    f"build ≈ {r['seed']['build_s']:.0f}s, query ≈ {r['seed']['median_ms']/1e3:.0f}s")
            else:
                r['seed'] = dict(method='seed',
                                 failed=f"not run: {n} pages > --seed-max-pages {a.seed_max_pages} and no "
                                 "smaller seed run to project from")
                log(f"seed @ {n}: SKIPPED ({r['seed']['failed']})")
            if not a.keep_dbs: shutil.rmtree(a.out/'db'/f'seed_{n}', ignore_errors=True)
        if 'ours' in methods:
            extra = ['--ours-kwargs', a.ours_kwargs] if a.ours_kwargs else []
            r['ours'] = summarize(run_child(a, 'ours', n, extra), ex, n)
            r['sweep'] = []
            for i, kw in enumerate(sweep if not r['ours'].get('failed') else []):
                kw = dict(kw); rebuild = kw.pop('_rebuild', False)
                if rebuild and n > a.sweep_rebuild_max_pages:
                    log(f"sweep {kw} @ {n}: skipped (needs a rebuild; "
                        f"{n} > --sweep-rebuild-max-pages {a.sweep_rebuild_max_pages})")
                    continue
                merged = {**json.loads(a.ours_kwargs or '{}'), **kw}
                sr = run_child(a, 'ours', n, ['--ours-kwargs', json.dumps(merged)] +
                               (['--db-name', f'ours_{n}_sweep{i}'] if rebuild else ['--reuse-db']), tag=f'_sweep{i}')
                if rebuild and not a.keep_dbs: shutil.rmtree(a.out/'db'/f'ours_{n}_sweep{i}', ignore_errors=True)
                r['sweep'].append(summarize(sr, ex, n))
            if not a.keep_dbs: shutil.rmtree(a.out/'db'/f'ours_{n}', ignore_errors=True)
        # write what we have after every size, so a long run leaves results behind
        write(a, res, env, git, sizes)
    md = write(a, res, env, git, sizes)
    print('\n' + md, flush=True)
    log(f"wrote {a.out/'results.json'} and {a.out/'results.md'}")

def write(a, res, env, git, sizes)->str:
    tg = targets(res)
    md = [f"# Retrieval benchmark ({', '.join(map(str, sizes))} pages; {a.queries} queries; "
          f"corpus seed {a.seed}; git {git})", '',
          f"Machine: {env['cpus']} CPUs, {env['mem_gb']} GB RAM; numpy {env['numpy']}, pymilvus {env['pymilvus']}, "
          f"milvus-lite {env['milvus_lite']}; colpali_milvus/retriever.py sha256 {env['retriever_py_sha256']}.", '',
          "Build: everything from opening the database until the first search has answered (that first search, the "
          "warm-up, is also shown alone). Median query: over the queries after the warm-up. Recall@10: overlap of the "
          "top-10 with the exact brute force's top-10, over all queries (warm-up included). build ratio = seed build "
          "s / method build s; latency ratio = brute force median ms / method median ms; disk ratio = method / seed. "
          "Peak RSS: VmHWM of the method's own child process (everything it holds, corpus included). RSS per page = "
          "peak RSS / pages; ΔRSS per page = (peak − RSS after imports) / pages. Disk: allocated bytes (du) of "
          "everything written in the method's database directory. ~ = projected, not measured.", '']
    for n in sizes:
        if n in res: md += [table(n, res[n]), '']
    md += ['## Targets', ''] + tg
    text = '\n'.join(md) + '\n'
    (a.out/'results.md').write_text(text)
    slim = {n: {k: ({kk: vv for kk, vv in v.items() if kk != 'top'} if isinstance(v, dict) else
                    [{kk: vv for kk, vv in x.items() if kk != 'top'} for x in v] if isinstance(v, list) else v)
                for k, v in r.items()} for n, r in res.items()}
    (a.out/'results.json').write_text(json.dumps(dict(args={k: str(v) for k, v in vars(a).items()}, env=env, git=git,
                                                      results=slim, targets=tg), indent=1))
    return text

if __name__ == '__main__':
    main()
