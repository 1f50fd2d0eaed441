"""Reader and writer processes on one server collection (`live`), for tests/test_servers.py and bench/concurrency.py.

The writer adds a page every 0.3 s (and deletes an older one every third time), logging each write with the time
`add_pages`/`delete_pages` returned. Each reader polls that log and searches for every page written, recording how
long after the write the first search that found it started (or that no longer found a deleted one), every search that
started more than `refresh_s` after a write and missed it (`late`; a page whose deletion began before the search
started may be missed), its errors and its RssAnon.
"""
import json, subprocess, sys, textwrap, time

READER = textwrap.dedent('''
    import json, sys, time, numpy as np
    from colpali_milvus.retriever import MilvusColbertRetriever
    from colpali_milvus.store import open_client
    uri, log_path, stop_at, refresh = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    def vecs(pid):
        x = np.random.default_rng(pid).standard_normal((30, 128)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    def anon():
        return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssAnon')) / 1024
    r = MilvusColbertRetriever(open_client(uri), 'live', refresh_s=refresh, exhaustive_rows=0, n_candidates=10,
                               memory_budget=64 << 20)
    def deleting(pid, before):   # the writer began deleting pid before `before` (after this loop read the log)
        return any(e['op'] == 'delete' and e['pid'] == pid and e['t0'] < before for e in map(json.loads, open(log_path)))
    seen, gone, errors, late, searches, rss = {}, {}, [], [], 0, []
    while time.time() < stop_at:
        try: events = [json.loads(l) for l in open(log_path)]
        except (OSError, ValueError): events = []
        stored = {e['pid']: e['t'] for e in events if e['op'] == 'add'}
        deleted = {e['pid']: e['t'] for e in events if e['op'] == 'delete'}
        for pid in list(stored) + list(deleted):
            if pid in seen and (pid not in deleted or pid in gone): continue
            start = time.time()   # a search that starts refresh_s after a write must see it
            try: top = [row['page_id'] for _, row in r.search_pages(vecs(pid)[:8], k=3)]
            except Exception as e: errors.append(repr(e)[:300]); continue
            searches += 1
            if pid in deleted:
                if pid not in top: gone.setdefault(pid, start - deleted[pid])
                elif start - deleted[pid] > refresh: late.append(('delete', pid, start - deleted[pid]))
            elif top[:1] == [pid]: seen.setdefault(pid, start - stored[pid])
            elif start - stored[pid] > refresh and not deleting(pid, start): late.append(('add', pid, start - stored[pid]))
        if searches: rss.append(anon())   # from the first search on (it imports torch)
        time.sleep(0.02)
    print(json.dumps({'seen': seen, 'gone': gone, 'errors': errors, 'late': late, 'searches': searches, 'rss': [rss[len(rss)//4], rss[-1]]}))
''')

WRITER = textwrap.dedent('''
    import json, sys, time, numpy as np
    from colpali_milvus.retriever import MilvusColbertRetriever
    from colpali_milvus.store import open_client
    uri, log_path, stop_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    def vecs(pid):
        x = np.random.default_rng(pid).standard_normal((30, 128)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    r = MilvusColbertRetriever(open_client(uri), 'live')
    pid, log = 1000, open(log_path, 'a')
    while time.time() < stop_at - 3:   # the last writes leave the readers time to see them
        r.add_pages([pid], [vecs(pid)])
        log.write(json.dumps({'op': 'add', 'pid': pid, 't': time.time()}) + chr(10)); log.flush()
        if pid % 3 == 0:
            t0 = time.time()
            r.delete_pages([pid - 2])
            log.write(json.dumps({'op': 'delete', 'pid': pid - 2, 't0': t0, 't': time.time()}) + chr(10)); log.flush()
        pid += 1; time.sleep(0.3)
''')


def run_readers_and_writer(uri:str, log, readers:int=4, seconds:float=60, refresh_s:float=2.0)->list:
    "Run `readers` reader processes and one writer for `seconds`; each reader's (result dict, stderr)."
    t_end = time.time() + seconds
    log.touch()
    procs = [subprocess.Popen([sys.executable, '-c', READER, uri, str(log), str(t_end), str(refresh_s)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(readers)]
    writer = subprocess.run([sys.executable, '-c', WRITER, uri, str(log), str(t_end)], capture_output=True, text=True,
                            timeout=seconds + 120)
    if writer.returncode: raise RuntimeError(f"the writer failed: {writer.stderr[-2000:]}")
    outs = [p.communicate(timeout=120) for p in procs]
    return [(json.loads(out.strip().splitlines()[-1]), err) for out, err in outs]
