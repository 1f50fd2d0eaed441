"""Many processes on one server collection (issue 10, target 6): 4 reader processes and 1 writer adding and removing
pages for 60 s on the Milvus 2.3.5 standalone. Prints, per reader: searches run, errors, searches that started more than
refresh_s after a write and missed it (late_misses: must be none), the time from a write returning to the start of the
first search that saw it (added pages found, deleted ones gone), and RssAnon a quarter of the way in and at the end.

    python bench/concurrency.py --readers 4 --seconds 60 --base-pages 1000 --out bench_out/concurrency.json
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent/'tests')]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--readers', type=int, default=4)
    ap.add_argument('--seconds', type=float, default=60)
    ap.add_argument('--refresh-s', type=float, default=2.0)
    ap.add_argument('--base-pages', type=int, default=1000, help='ColPali-shaped pages stored before the run')
    ap.add_argument('--out', type=Path, default=Path('bench_out/concurrency.json'))
    a = ap.parse_args()
    from corpus import Corpus
    from live_clients import run_readers_and_writer
    from milvus_servers import start_milvus_standalone

    from colpali_milvus.retriever import MilvusColbertRetriever
    from colpali_milvus.store import open_client
    work = Path(tempfile.mkdtemp(prefix='concurrency_')).resolve()
    os.environ['QUERYNODE_MMAPDIRPATH'] = str(work/'mmap')
    srv = start_milvus_standalone(work/'server')
    try:
        r = MilvusColbertRetriever(open_client(srv.uri), 'live')
        r.create_collection()
        c = Corpus(a.base_pages)
        for s in range(0, a.base_pages, 64):
            r.add_pages(list(range(s, min(s + 64, a.base_pages))), c.pages(s, min(s + 64, a.base_pages)))
        outs = run_readers_and_writer(srv.uri, work/'writes.jsonl', a.readers, a.seconds, a.refresh_s)
        events = [json.loads(line) for line in (work/'writes.jsonl').read_text().splitlines()]
        added = {str(e['pid']) for e in events if e['op'] == 'add'}
        deleted = {str(e['pid']) for e in events if e['op'] == 'delete'}
        res = dict(readers=a.readers, seconds=a.seconds, refresh_s=a.refresh_s, base_pages=a.base_pages,
                   writes=dict(added=len(added), deleted=len(deleted)), per_reader=[])
        for out, err in outs:
            lags = list(out['seen'].values()) + list(out['gone'].values())
            res['per_reader'].append(dict(searches=out['searches'], errors=len(out['errors']),
                                          missed=sorted(added - deleted - set(out['seen'])),
                                          not_gone=sorted(deleted - set(out['gone'])),
                                          late_misses=out['late'], max_lag_s=max(lags),
                                          median_lag_s=float(np.median(lags)),
                                          rss_anon_mb_quarter_and_end=out['rss'],
                                          stderr_tracebacks=err.count('Traceback')))
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
    finally: srv.stop()

if __name__ == '__main__': main()
