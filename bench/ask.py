"""Ask benchmark: time to first token and total time of `ColPaliIndex.ask` with k = 1 and 3 pages, on this machine,
with a randomly initialised VLM of real width (SmolVLM-256M: SigLIP 768-d, 512-px tiles of 64 tokens, Llama 576-d)
and few layers, in process and through `transformers serve` (OpenAI-compatible endpoint on 127.0.0.1); and how
many image tokens the prompt holds per k.

    python bench/ask.py                          # 2 + 2 layers, 32 new tokens, 3 runs per setting
    python bench/ask.py --layers 4 --runs 5 --device cuda

Retrieval uses the tiny ColPali on the bundled sample PDF (its pages rendered as the index renders them): retrieval
time is not what this measures (see the other benches). The random VLM writes noise, but every token is a real
forward pass; its generation config makes every answer exactly `max_new_tokens` tokens of random letters
and spaces (one character each, streamed token by token), in process and served, so the table's tokens written
checks that. Prints a Markdown table and writes <out>/ask.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

Q = "What does the ColBERT performance table compare?"


def free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def start_server(model:Path, device:str, log:Path):
    port = free_port()
    exe = Path(sys.executable).parent/'transformers'
    proc = subprocess.Popen([str(exe), 'serve', str(model), '--host', '127.0.0.1', '--port', str(port),
                             '--device', device],
                            stdout=open(log, 'w'), stderr=subprocess.STDOUT, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    url, t0 = f'http://127.0.0.1:{port}/v1', time.monotonic()
    while True:
        if proc.poll() is not None: sys.exit(f'transformers serve exited:\n{log.read_text()[-2000:]}')
        try:
            with urllib.request.urlopen(url + '/models', timeout=2): return proc, url, time.monotonic() - t0
        except OSError: time.sleep(0.5)


def measure(idx, vlm, k:int, runs:int, tokenizer)->dict:
    "Median (and min) first-token and total seconds of `runs` asks after one warm-up ask."
    idx.ask(Q, k=k, vlm=vlm)  # warm-up: first use of the model, caches
    rows = []
    for _ in range(runs):
        a = idx.ask(Q, k=k, vlm=vlm)
        rows.append(dict(first_token=a.timings['first_token'], total=a.timings['total'], retrieve=a.timings['retrieve'],
                         prepare=a.timings['prepare'],
                         new_tokens=len(tokenizer(a.text, add_special_tokens=False)['input_ids']),
                         image_tokens=a.image_tokens, prompt_tokens=a.prompt_tokens))
    def med(key): return statistics.median(r[key] for r in rows)
    return {'k': k, 'runs': rows, 'first_token_s': med('first_token'), 'total_s': med('total'),
            'first_token_min_s': min(r['first_token'] for r in rows), 'total_min_s': min(r['total'] for r in rows),
            'prepare_s': med('prepare'), 'retrieve_s': med('retrieve'), 'new_tokens': med('new_tokens'),
            'image_tokens': rows[0]['image_tokens'], 'prompt_tokens': rows[0]['prompt_tokens']}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--layers', type=int, default=2,
                   help='vision and text layers of the random VLM (the real one: 12 + 30)')
    p.add_argument('--max-new-tokens', type=int, default=32); p.add_argument('--runs', type=int, default=3)
    p.add_argument('--device', default='cpu'); p.add_argument('--out', default='bench_out')
    p.add_argument('--no-serve', action='store_true', help='skip the transformers serve runs')
    a = p.parse_args()
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    import torch

    from colpali_milvus.ask import EndpointVLM, LocalVLM, build_tiny_vlm
    from colpali_milvus.core import data_path
    from colpali_milvus.index import ColPaliIndex
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter('ignore')
    model = build_tiny_vlm('smolvlm', out/f'ask-smolvlm-256m-{a.layers}l', size='small', layers=a.layers)
    from transformers import GenerationConfig  # every answer max_new_tokens long, in process and served alike
    gc = GenerationConfig.from_pretrained(model); gc.min_new_tokens = a.max_new_tokens; gc.save_pretrained(model)
    idx = ColPaliIndex(str(out/'ask.db'), collection='ask', model='tiny', pages_dir=str(out/'ask_pages'))
    idx.add(data_path('sample.pdf'), progress=False)
    res = {'machine': f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                      f"torch {torch.__version__}, threads {torch.get_num_threads()}",
           'vlm': f'random SmolVLM-256M widths, {a.layers} vision + {a.layers} text layers', 'device': a.device,
           'max_new_tokens': a.max_new_tokens, 'modes': {}}
    t = time.perf_counter()
    local = LocalVLM(str(model), device=a.device, dtype='float32', max_new_tokens=a.max_new_tokens)
    res['load_local_s'] = time.perf_counter() - t
    res['params_M'] = sum(p.numel() for p in local.model.parameters())/1e6
    tok = local.processor.tokenizer
    res['modes']['in process'] = [measure(idx, local, k, a.runs, tok) for k in (1, 3)]
    if not a.no_serve:
        del local
        proc, url, up = start_server(model, a.device, out/'ask-serve.log')
        res['serve_start_s'] = up
        try:
            ep = EndpointVLM(url, max_new_tokens=a.max_new_tokens)
            res['modes']['transformers serve'] = [measure(idx, ep, k, a.runs, tok) for k in (1, 3)]
        finally: proc.terminate(); proc.wait(30)
    idx.close()
    (out/'ask.json').write_text(json.dumps(res, indent=1))
    print(f"{res['vlm']} ({res['params_M']:.0f} M parameters), {a.device}, {res['machine']}; "
          f"max_new_tokens={a.max_new_tokens}, median of {a.runs} after a warm-up\n")
    print('| mode | k | image tokens | prompt tokens | prepare s | first token s | total s | tokens written |')
    print('|---|---|---|---|---|---|---|---|')
    for mode, rows in res['modes'].items():
        for r in rows:
            it = '–' if r['image_tokens'] is None else r['image_tokens']
            pt = '–' if r['prompt_tokens'] is None else r['prompt_tokens']
            print(f"| {mode} | {r['k']} | {it} | {pt} | {r['prepare_s']:.2f} | {r['first_token_s']:.2f} "
                  f"| {r['total_s']:.2f} | {r['new_tokens']:.0f} |")


if __name__ == '__main__':
    main()
