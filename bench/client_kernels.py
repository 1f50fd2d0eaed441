"""What a server search costs the client (issue 10): decoding what it reads, and the sign-sketch screen.

    python bench/client_kernels.py [--candidates 100] [--rerank 32] [--runs 20]

A server search at scale reads `--candidates` sign sketches and `--rerank` pages in full (1030 x 128 each, as
stored); this times, in this process, the client's work on them: base64 decoding by the standard library against
pybase64 (what `store.from_blob` uses), and `maxsim.sketch_maxsim` against the kernel it replaced (the bits cast
to float by torch, then 2b - 1), on 25 query vectors. Prints the median and minimum of `--runs` calls, in ms.
"""
import argparse
import base64
import json
import time

import numpy as np
import torch

from colpali_milvus.maxsim import page_max, sketch_maxsim
from colpali_milvus.store import from_sketch, to_blob, to_sketch


def torch_cast_sketch_maxsim(q, sketches):
    "The kernel `sketch_maxsim` replaced: sign bits cast to float32 by torch, then mapped to +1 / -1."
    signs = torch.from_numpy(np.unpackbits(np.concatenate(sketches), axis=1)[:, :q.shape[1]])
    signs = signs.to(torch.float32) * 2 - 1
    return page_max(torch.from_numpy(q) @ signs.T, [len(s) for s in sketches])


def timed(f, runs:int)->dict:
    ts = []
    for _ in range(runs):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return {'median_ms': round(float(np.median(ts)) * 1e3, 2), 'min_ms': round(min(ts) * 1e3, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--candidates', type=int, default=100)
    ap.add_argument('--rerank', type=int, default=32)
    ap.add_argument('--runs', type=int, default=20)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    pages = [rng.standard_normal((1030, 128)).astype(np.float32) for _ in range(a.candidates)]
    q = (pages[0][:25] / np.linalg.norm(pages[0][:25], axis=1, keepdims=True)).astype(np.float32)
    sketches = [from_sketch(to_sketch(p), 128) for p in pages]
    streams = [''.join(to_blob(p)) for p in pages[:a.rerank]]   # one base64 stream per page, as stored
    np.testing.assert_allclose(sketch_maxsim(q, sketches, 'float32'), torch_cast_sketch_maxsim(q, sketches), rtol=1e-5)
    import pybase64
    print(json.dumps({
        'torch_threads': torch.get_num_threads(), 'pages read in full': a.rerank, 'sketches': a.candidates,
        'base64 decode, standard library': timed(lambda: [base64.b64decode(s) for s in streams], a.runs),
        'base64 decode, pybase64 (store.from_blob)':
            timed(lambda: [pybase64.b64decode(s, validate=True) for s in streams], a.runs),
        'sketch screen, torch uint8 cast (before)': timed(lambda: torch_cast_sketch_maxsim(q, sketches), a.runs),
        'sketch screen, maxsim.sketch_maxsim float32': timed(lambda: sketch_maxsim(q, sketches, 'float32'), a.runs),
    }, indent=1))


if __name__ == '__main__': main()
