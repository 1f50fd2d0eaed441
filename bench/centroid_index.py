"""The server's candidate stage on its own: build centroid collections with given index parameters on the Milvus
standalone, then sweep `hits` and `ef` and report the recall of the exact top-10 among the candidates, with and
without the sign-sketch screen that picks the pages to read in full.

    .venv/bin/python bench/centroid_index.py --pages 3000 --queries 40
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent/'tests')]
from corpus import Corpus  # noqa: E402
from scale import BULK_BUILD, exact_maxsim  # noqa: E402

from colpali_milvus.candidates import MilvusCandidates, page_centroids  # noqa: E402
from colpali_milvus.maxsim import sketch_maxsim  # noqa: E402
from colpali_milvus.store import open_client  # noqa: E402

CONFIGS = [['h12', 'HNSW', {'M': 12, 'efConstruction': 48}], ['h16', 'HNSW', {'M': 16, 'efConstruction': 128}],
           ['h32', 'HNSW', {'M': 32, 'efConstruction': 200}]]
SWEEP = [(128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]   # (hits, ef)

def corpus_facts(pages:int, n_queries:int, pool:int)->tuple:
    "Queries, exact MaxSim of each query on each page (float16 vectors, as stored), centroids, sign bits."
    import torch
    c = Corpus(pages, 0)
    Q = np.stack([c.query(j)[0] for j in range(n_queries)]).astype(np.float32)
    exact, cents, bits = np.empty((n_queries, pages), np.float32), [], []
    for i in range(pages):
        p = c.page(i).astype(np.float16).astype(np.float32)
        exact[:, i] = exact_maxsim(torch.from_numpy(Q), [p])[:, 0]
        cents.append(page_centroids(p, pool)); bits.append(np.packbits(p > 0, axis=1))
    return Q, exact, cents, bits

def by_sketch(q, cand:np.ndarray, bits:list)->np.ndarray:
    "The candidate page ids `cand`, best first by their sign sketches."
    return cand[np.argsort(-sketch_maxsim(q, [bits[p] for p in cand], 'float32'))]

def build(client, name:str, index:str, params:dict, cents:list, pool:int)->tuple:
    "A centroid collection of every page, indexed: the stage and the seconds to insert and to index."
    mc = MilvusCandidates(client, name, cents[0].shape[1], pool)
    t = time.time(); mc.create(1, index, params)
    for s in range(0, len(cents), 64): mc.put(list(range(s, min(len(cents), s + 64))), cents[s:s+64], overwrite=False)
    client.flush(mc.name); t_insert = time.time() - t
    while True:
        info = client.describe_index(mc.name, 'vector_index')
        if info.get('pending_index_rows', 1) == 0 and info.get('indexed_rows') == info.get('total_rows'): break
        time.sleep(1)
    return mc, t_insert, time.time() - t

def sweep(mc, Q, exact, bits, n_candidates:int=100, n_rerank=(20, 30))->list:
    "Per (hits, ef): median search ms, recall@10 in the first 50/100/200 candidates and after the sketch screen."
    out = []
    for hits, ef in SWEEP:
        rec, screened, ts = {n: [] for n in (50, 100, 200)}, {m: [] for m in n_rerank}, []
        for j, q in enumerate(Q):
            t = time.time(); pids = mc.search(q, 200, hits, ef=ef, consistency_level='Bounded')
            ts.append(time.time() - t)
            top = set(np.argsort(-exact[j])[:10].tolist())
            for n in rec: rec[n].append(len(top & set(pids[:n].tolist())) / 10)
            order = by_sketch(q, pids[:n_candidates], bits)
            for m in screened: screened[m].append(len(top & set(order[:m].tolist())) / 10)
        out.append(dict(hits=hits, ef=ef, median_ms=float(np.median(ts) * 1e3),
                        recall_in_candidates={n: float(np.mean(v)) for n, v in rec.items()},
                        recall_after_screen={m: float(np.mean(v)) for m, v in screened.items()}))
        print(' ', json.dumps(out[-1]), flush=True)
    return out

def screen_alone(Q, exact, bits, n_candidates:int=100, keep=(10, 15, 20, 25, 30, 40, 50))->dict:
    "The sketch screen with perfect candidates (the exact top `n_candidates`): recall@10 of its best `keep`."
    rec = {m: [] for m in keep}
    for j, q in enumerate(Q):
        cand = np.argsort(-exact[j])[:n_candidates]
        order = by_sketch(q, cand, bits)
        for m in rec: rec[m].append(len(set(cand[:10].tolist()) & set(order[:m].tolist())) / 10)
    return {m: float(np.mean(v)) for m, v in rec.items()}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--pages', type=int, default=3000)
    ap.add_argument('--queries', type=int, default=40)
    ap.add_argument('--pool', type=int, default=96)
    ap.add_argument('--configs', type=json.loads, default=CONFIGS, help='[[name, index type, params], ...] as JSON')
    ap.add_argument('--out', type=Path, default=Path('bench_out/centroid_index.json'))
    a = ap.parse_args()
    from milvus_servers import start_milvus_standalone
    t = time.time(); Q, exact, cents, bits = corpus_facts(a.pages, a.queries, a.pool)
    print(f'corpus, exact answers, centroids and sketches: {time.time() - t:.0f} s', flush=True)
    res = dict(pages=a.pages, queries=a.queries, pool=a.pool, screen_alone=screen_alone(Q, exact, bits), configs=[])
    print('sketch screen of the exact top 100, recall@10 of its best m:', json.dumps(res['screen_alone']), flush=True)
    work = Path(tempfile.mkdtemp(prefix='centroid_index_'))
    os.environ['QUERYNODE_MMAPDIRPATH'] = str(work/'mmap'); os.environ.update(BULK_BUILD)
    srv = start_milvus_standalone(work/'server', timeout=180)
    try:
        client = open_client(srv.uri)
        for name, index, params in a.configs:
            mc, t_insert, t_indexed = build(client, name, index, params, cents, a.pool)
            print(name, index, params, f'inserted in {t_insert:.0f} s, indexed at {t_indexed:.0f} s', flush=True)
            res['configs'].append(dict(name=name, index=index, params=params, insert_s=t_insert, indexed_s=t_indexed,
                                       sweep=sweep(mc, Q, exact, bits)))
            client.drop_collection(mc.name)
    finally:
        srv.stop(); shutil.rmtree(work, ignore_errors=True)
    a.out.parent.mkdir(parents=True, exist_ok=True); a.out.write_text(json.dumps(res, indent=1))

if __name__ == '__main__': main()
