"""Recall@10 of the retriever's candidate stage by centroids per page (`pool`), candidate dtype and `n_candidates`.

    .venv/bin/python bench/pool_recall.py --pages 10000          # the corpus of bench/run.py (cached in bench_out/)

For every page of the corpus: exact MaxSim of each query over all its vectors (the truth), and its centroids at each
pool size (`colpali_milvus.candidates.page_centroids`, as the retriever stores them), computed once and cached. Then
each candidate stage is replayed: MaxSim over the centroids (float32, or bfloat16 as the engine does it on CPUs with
native bf16) picks `n_candidates` pages, which are ranked by their exact scores; recall@10 = overlap with the exact
top-10.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE)); sys.path.insert(0, str(HERE.parent))
import run  # noqa: E402  (bench/run.py, importable only after the sys.path insert above)

from colpali_milvus.candidates import page_centroids as pool_vectors  # noqa: E402  (the repo root, on sys.path above)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--pages', type=int, default=10000)
    ap.add_argument('--queries', type=int, default=30)
    ap.add_argument('--pools', default='96,64,48')
    ap.add_argument('--candidates', default='50,100,150')
    ap.add_argument('--out', type=Path, default=Path('bench_out'))
    a = ap.parse_args()
    n, pools, cands = a.pages, [int(x) for x in a.pools.split(',')], [int(x) for x in a.candidates.split(',')]
    run.ensure_corpus(a.out, n, 0, a.queries)
    pages = run.Pages(run.cache_paths(a.out, n, 0)[0])
    qs, _ = run.load_queries(a.out, n, 0, a.queries)
    cache = a.out / f'pool_recall_{n}_{a.queries}_{a.pools.replace(",", "-")}.npz'
    if cache.exists():
        z = np.load(cache); cents = {m: z[f'c{m}'] for m in pools}; exact = z['exact']
    else:
        t = time.time()
        cents = {m: np.empty((n, m, run.DIM), np.float32) for m in pools}; exact = np.empty((len(qs), n), np.float32)
        for s in range(0, n, 256):
            e = min(s + 256, n); b = pages.read(s, e)
            for i in range(e - s):
                for m in pools: cents[m][s + i] = pool_vectors(b[i], m)
            for j, q in enumerate(qs): exact[j, s:e] = run.brute_scores(b, q)
            run.log(f"  pages {e}/{n} ({time.time() - t:.0f}s)")
        np.savez(cache, exact=exact, **{f'c{m}': cents[m] for m in pools})
    truth = [set(np.lexsort((np.arange(n), -exact[j]))[:10]) for j in range(len(qs))]
    print(f"\n{n} pages, {len(qs)} queries: recall@10 by n_candidates\n")
    print('| pool | dtype | ' + ' | '.join(str(c) for c in cands) + ' |')
    print('|---|---|' + '---|' * len(cands))
    for m in pools:
        flat = cents[m].reshape(-1, run.DIM); bf = torch.from_numpy(flat).bfloat16()
        for dtype in ('float32', 'bfloat16'):
            rec = {c: [] for c in cands}
            for j, q in enumerate(qs):
                if dtype == 'float32': sc = (q @ flat.T).reshape(len(q), n, m).max(2).sum(0)
                else: sc = (torch.from_numpy(q).bfloat16() @ bf.T).float().view(len(q), n, m).amax(2).sum(0).numpy()
                for c in cands:
                    cand = np.argpartition(-sc, c)[:c]
                    top = cand[np.lexsort((cand, -exact[j, cand]))][:10]
                    rec[c].append(len(truth[j] & set(top)) / 10)
            print(f"| {m} | {dtype} | " + ' | '.join(f"{np.mean(rec[c]):.3f}" for c in cands) + ' |', flush=True)

if __name__ == '__main__': main()
