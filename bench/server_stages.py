"""Where a server search spends its time (issue 10): each stage of `search_pages` timed apart, with cold caches.

    python bench/server_stages.py bench_out/scale30k/<work folder> --queries 20 [--hits 64]

Runs against a server that `bench/scale.py --keep --hold S` left running (its uri in <work>/uri) and that work
folder's queries (truth.npz). Per query, one after another: the centroid search in Milvus (all query vectors in one
call), the candidates' page rows, their sign sketches, the blob rows of `n_rerank` of them, and then the whole
search; the client's caches are emptied before each, so every read goes to the server (as at 30,000 pages, where
few candidates repeat). Prints the median of each, and recall@10 of the whole searches.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from colpali_milvus.retriever import MilvusColbertRetriever
from colpali_milvus.store import open_client


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('work', type=Path)
    ap.add_argument('--queries', type=int, default=20)
    ap.add_argument('--hits', type=int, default=None,
                    help='centroids each query vector asks for (default: the retriever\'s)')
    a = ap.parse_args()
    z = np.load(a.work/'truth.npz'); Q, top = z['queries'], z['top']
    r = MilvusColbertRetriever(open_client((a.work/'uri').read_text().strip()), 'scale',
                               **({'hits': a.hits} if a.hits else {}))
    times, rec = {k: [] for k in ('centroid search', 'page rows', 'sketches', 'blob rows of n_rerank', 'search')}, []
    def timed(name, f):
        t = time.perf_counter(); out = f(); times[name].append(time.perf_counter() - t); return out
    for j in range(a.queries):
        q, read = Q[j % len(Q)].astype(np.float32), r.consistency()
        r.cache.clear(); r.sketches.clear()
        pids = timed('centroid search', lambda: r.centroids.search(q, r.n_candidates, r.hits, **read))
        rows = timed('page rows', lambda: r.page_rows([int(p) for p in pids], **read))
        timed('sketches', lambda: r._fetch_sketches(list(rows), read))
        timed('blob rows of n_rerank', lambda: r._fetch_blobs(list(rows.values())[:r.n_rerank], read))
        r.cache.clear(); r.sketches.clear()
        got = timed('search', lambda: r.search(q, 10))
        rec.append(len({p for _, p in got} & set(top[j % len(Q)].tolist())) / 10)
    print(json.dumps({'queries': a.queries, 'hits': r.hits, 'n_candidates': r.n_candidates, 'n_rerank': r.n_rerank,
                      'median_ms': {k: round(float(np.median(v)) * 1e3, 1) for k, v in times.items()},
                      'recall_at_10': float(np.mean(rec))}))


if __name__ == '__main__': main()
