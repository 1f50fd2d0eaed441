"""Token pooling benchmark: vectors and bytes per page, recall@10 against unpooled exact MaxSim, and pooling time.

    python bench/pooling.py --pages 2000 --queries 100 --factors 2,3 --keep-last 6,0

Pages and queries come from bench/corpus.py (ColPali-shaped: 1030 unit-norm 128-d vectors per page, of which the last
6 play ColPali's prompt tokens). Every query is scored by exact MaxSim against every page, unpooled (the ground truth)
and pooled at each (pool factor, keep_last); recall@10 = overlap of the pooled top-10 with the unpooled top-10.

Pooling is `colpali_milvus.pooling.pool_tokens` (colpali-engine's HierarchicalTokenPooler). To pool 2000 pages at
several factors without clustering each page once per factor, the bench builds each page's Ward linkage once (the very
computation the pooler does) and cuts it at every factor; on the first --check-pages pages it checks that this gives
exactly what `pool_tokens` returns, and it times `pool_tokens` itself (one thread) on those pages.
Writes <out>/pooling.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE)); sys.path.insert(0, str(HERE.parent))
from corpus import Corpus  # noqa: E402  (bench/corpus.py, importable only after the sys.path insert above)

from colpali_milvus.pooling import pool_tokens  # noqa: E402  (the repo root, on sys.path above)

TOPK, BLOB_CENTROIDS = 10, 96
T0 = time.time()
def log(*a): print(f"[{time.time()-T0:7.1f}s]", *a, flush=True)

def cut(head:np.ndarray, Z, factor:int)->np.ndarray:
    "The pooled vectors of `head` for the linkage `Z` cut at `factor`: HierarchicalTokenPooler's output."
    e = torch.from_numpy(head)
    k = max(len(head) // factor, 1)
    labels = fcluster(Z, t=k, criterion='maxclust') - 1
    out = [torch.nn.functional.normalize(e[torch.where(torch.tensor(labels == c))].mean(dim=0), p=2, dim=-1)
           for c in range(k) if (labels == c).any()]
    return torch.stack(out).numpy()

def ward(head:np.ndarray):
    "The pooler's linkage: Ward over the rows of 1 - cosine similarity."
    e = torch.from_numpy(head)
    return linkage(1 - torch.mm(e, e.t()).numpy(), metric='euclidean', method='ward')

def scores(Q:np.ndarray, page:np.ndarray)->np.ndarray:
    "MaxSim of each query (nq, nt, dim) against one page."
    return (Q.reshape(-1, Q.shape[-1]) @ page.T).reshape(Q.shape[0], Q.shape[1], -1).max(-1).sum(-1)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--pages', type=int, default=2000)
    ap.add_argument('--queries', type=int, default=100)
    ap.add_argument('--factors', default='2,3')
    ap.add_argument('--keep-last', default='6,0', help='prompt vectors left unpooled (6 = ColPali), comma-separated')
    ap.add_argument('--check-pages', type=int, default=30, help='pages on which pool_tokens is timed and compared')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', default='bench_out')
    a = ap.parse_args()
    factors, keeps = [int(x) for x in a.factors.split(',')], [int(x) for x in a.keep_last.split(',')]
    torch.set_num_threads(1)
    c = Corpus(a.pages, a.seed)
    qs = [c.query(j) for j in range(a.queries)]
    Q, targets = np.stack([q for q, _ in qs]), np.array([t for _, t in qs])
    full = np.zeros((a.queries, a.pages), np.float32)
    configs = [(f, kl) for kl in keeps for f in factors]
    pooled = {cfg: np.zeros((a.queries, a.pages), np.float32) for cfg in configs}
    nvec = {cfg: np.zeros(a.pages, np.int32) for cfg in configs}
    t_pool = {cfg: [] for cfg in configs}; t_link = {kl: 0. for kl in keeps}; t_cut = {cfg: 0. for cfg in configs}
    last = time.time()
    for i in range(a.pages):
        v = c.page(i)
        full[:, i] = scores(Q, v)
        for kl in keeps:
            head, tail = v[:len(v) - kl], v[len(v) - kl:]
            t = time.perf_counter(); Z = ward(head); t_link[kl] += time.perf_counter() - t
            for f in factors:
                t = time.perf_counter(); p = np.concatenate([cut(head, Z, f), tail])
                t_cut[(f, kl)] += time.perf_counter() - t
                if i < a.check_pages:
                    t = time.perf_counter(); ref = pool_tokens(v, f, keep_last=kl)
                    t_pool[(f, kl)].append(time.perf_counter() - t)
                    if not np.array_equal(ref, p):
                        raise AssertionError(f"page {i}, factor {f}, keep_last {kl}: bench cut != pool_tokens")
                pooled[(f, kl)][:, i], nvec[(f, kl)][i] = scores(Q, p), len(p)
        if time.time() - last > 30: last = time.time(); log(f"{i+1}/{a.pages} pages")
    top_full = np.argsort(-full, axis=1, kind='stable')[:, :TOPK]
    res = {'pages': a.pages, 'queries': a.queries, 'seed': a.seed, 'vectors_per_page': 1030,
           'check_pages': a.check_pages,
           'unpooled': {'vectors': 1030, 'kb_f16': 1030 * 256 / 1024,
                        'top1_is_target': float((top_full[:, 0] == targets).mean())},
           'pooled': []}
    for (f, kl) in configs:
        top = np.argsort(-pooled[(f, kl)], axis=1, kind='stable')[:, :TOPK]
        rec = np.mean([len(set(a_) & set(b_)) / TOPK for a_, b_ in zip(top, top_full)])
        n = nvec[(f, kl)]
        res['pooled'].append({'factor': f, 'keep_last': kl, 'vectors_mean': float(n.mean()),
                              'vectors_min': int(n.min()), 'vectors_max': int(n.max()),
                              'kb_f16': float(n.mean() * 256 / 1024),
                              'size_ratio': float(n.mean() / 1030), 'recall@10': float(rec),
                              'top1_is_target': float((top[:, 0] == targets).mean()),
                              'target_in_top10': float(np.mean([t in row for t, row in zip(targets, top)])),
                              'pool_vectors_ms_per_page': 1000 * float(np.median(t_pool[(f, kl)])),
                              'bench_linkage_ms_per_page': 1000 * t_link[kl] / a.pages})
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out/'pooling.json').write_text(json.dumps(res, indent=1))
    print(f"\n{a.pages} pages, {a.queries} queries; unpooled: 1030 vectors = {1030*256/1024:.1f} KB/page (float16), "
          f"exact top-1 = target in {res['unpooled']['top1_is_target']:.0%} of queries\n")
    print("| pool factor | keep_last | vectors per page (mean, min-max) | KB per page (float16) | size vs unpooled "
          "| recall@10 vs unpooled exact | top-1 = target | pool_tokens ms/page (1 thread) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res['pooled']:
        print(f"| {r['factor']} | {r['keep_last']} | {r['vectors_mean']:.1f} ({r['vectors_min']}-{r['vectors_max']}) | "
              f"{r['kb_f16']:.1f} | {r['size_ratio']:.3f} | {r['recall@10']:.3f} | {r['top1_is_target']:.0%} | "
              f"{r['pool_vectors_ms_per_page']:.0f} |")
    log(f"done -> {out/'pooling.json'}")

if __name__ == '__main__': main()
