"""Start and stop local Milvus servers for tests: `milvus-lite server` and the `milvus` 2.3.5
standalone (`milvus-server`).

Every server listens on 127.0.0.1 on ports found free by binding port 0, keeps its data in its own directory, runs in
its own process group (so stopping it also stops its children) and dies with the test process (PR_SET_PDEATHSIG, plus an
atexit hook), so no process outlives the tests, whatever happens to them.

Ports of the `milvus` 2.3.5 standalone (found by reading `milvus/__init__.py` and `config.yaml.template` of the PyPI
package): `milvus-server` writes `<data>/configs/milvus.yaml` from a template with ten ports (etcd 2379, rootCoord
53100, proxy 19530, proxy internal 19529, queryCoord 19531, queryNode 21123, indexCoord 22930, indexNode 21121,
dataCoord 13333, dataNode 21124). A `--x-port P` flag does not pin a port: the wrapper scans upward from P (default: the
template's value) for the first port it can bind, then releases it before starting `milvus`. Two more ports are not
flags at all: the metrics/REST/healthz port (env METRICS_PORT, scanned upward from 9091 by the wrapper) and the embedded
etcd's peer port (2380, etcd's own default, since Milvus only reads etcd's listen addresses from an etcd config file).
So two standalones started with default flags clash on 2379/2380/... . Here every flag gets a free port, the embedded
etcd gets a config file (env ETCD_CONFIG_PATH, which Milvus maps onto `etcd.config.path`) with a free client and peer
port, and starts are serialised with a file lock so that two concurrent wrappers cannot pick the same metrics port.
MinIO, Pulsar and Kafka are not used: storage is local files and the message queue is the embedded RocksMQ (no port).
Its wrapper only handles SIGINT (SIGTERM would orphan `milvus`), so that is what `stop()` sends it. Restarting a
standalone on the same ports right away fails (its proxy port is in TIME_WAIT and the wrapper then silently moves to the
next port; caught by `_check_ports`), and on the same data directory it takes ~55 s (old etcd sessions must expire):
start a new one.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ['READY_TIMEOUT', 'ServerStartError', 'ServerProcess', 'find_executable', 'free_ports',
           'start_lite_server', 'launch_milvus_standalone', 'start_milvus_standalone', 'stop_all']

READY_TIMEOUT = 60.0  # seconds a server gets to answer list_collections()
STOP_TIMEOUT = 15.0  # seconds between the polite signal and SIGKILL
HOST = '127.0.0.1'
_LIVE: set = set()  # servers started by this process and not yet stopped


class ServerStartError(RuntimeError):
    "A server did not come up; the message carries the tail of its log. `exited`: its process ended by itself."
    def __init__(self, msg, exited:bool=False): super().__init__(msg); self.exited = exited


def find_executable(name:str)->str|None:
    "Path of console script `name`: next to this Python (the venv's bin) first, then on PATH."
    p = Path(sys.executable).with_name(name)
    if p.is_file() and os.access(p, os.X_OK): return str(p)
    return shutil.which(name)


def free_ports(n:int=1)->list[int]:
    "`n` distinct TCP ports that are free right now on every interface (bind port 0, all sockets held until the end)."
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(('', 0)); socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks: s.close()


try:
    import ctypes
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: a preexec_fn should not import
except (ImportError, OSError, AttributeError): _prctl = None

def _die_with_parent(sig):
    "preexec_fn: the child gets `sig` when the test process dies (Linux; None elsewhere)."
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits, so only use it from the main thread
    if _prctl is None or threading.current_thread() is not threading.main_thread(): return None
    def f(): _prctl(1, int(sig))  # PR_SET_PDEATHSIG
    return f


def _tail(path, n:int=40)->str:
    try: lines = Path(path).read_text(errors='replace').splitlines()
    except OSError as e: return f"({path}: {e})"
    return '\n'.join(lines[-n:])


@contextlib.contextmanager
def _quiet_pymilvus():
    "pymilvus logs every failed connection attempt at ERROR; hide that while polling a starting server."
    lg = logging.getLogger('pymilvus'); level = lg.level
    lg.setLevel(logging.CRITICAL + 1)
    try: yield
    finally: lg.setLevel(level)


def ping(uri:str, timeout:float=2.0)->list:
    "list_collections() on a fresh dedicated client (closed afterwards); raises when the server does not answer."
    from pymilvus import MilvusClient
    c = MilvusClient(uri=uri, timeout=timeout, dedicated=True)
    try: return c.list_collections(timeout=timeout)
    finally: c.close()


class ServerProcess:
    "One server process (and its process group) with its log, data directory and port."
    def __init__(self, name:str, argv:list, port:int, data_dir, log_path, env:dict|None=None,
                 stop_signal=signal.SIGTERM, extra_logs:tuple=()):
        self.name, self.argv, self.port, self.data_dir = name, [str(a) for a in argv], port, Path(data_dir)
        self.log_path, self.env, self.stop_signal, self.extra_logs = Path(log_path), env, stop_signal, tuple(extra_logs)
        self.proc, self.starts, self.ready_s = None, 0, None
        self.check = None  # optional callable run while waiting: raises ServerStartError when something is off

    @property
    def uri(self)->str: return f"http://{HOST}:{self.port}"

    def __repr__(self): return f"<{self.name} {self.uri} pid={self.proc.pid if self.proc else None}>"

    @property
    def running(self)->bool: return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n:int=40)->str:
        return '\n'.join(f"--- {p} (last {n} lines) ---\n{_tail(p, n)}" for p in (self.log_path, *self.extra_logs))

    def start(self, timeout:float=READY_TIMEOUT)->'ServerProcess':
        "Launch the process and wait until it answers; on failure stop it and raise ServerStartError with its log tail."
        self.launch()
        try: self.ready_s = self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self)->'ServerProcess':
        "Start the process without waiting for it (see `wait_ready`)."
        if self.running: raise RuntimeError(f"{self} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, 'ab') as log:
            log.write(f"\n=== start {self.starts + 1}: {' '.join(self.argv)}\n".encode()); log.flush()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True,
                                         preexec_fn=_die_with_parent(self.stop_signal))
        self.starts += 1
        self.launched_at = time.time()
        _LIVE.add(self)
        return self

    def wait_ready(self, timeout:float=READY_TIMEOUT)->float:
        "Poll list_collections() until it answers; seconds it took. Fails at once if the process exits."
        t0 = time.monotonic(); deadline = t0 + timeout; last = None; had_children = False
        with _quiet_pymilvus():
            while True:
                kids = _children(self.proc.pid)
                had_children |= bool(kids)
                if had_children and kids == []:  # `milvus-server` waits forever for its `milvus` child, even a dead one
                    raise ServerStartError(f"{self.name}: its server process exited before answering on {self.uri} "
                                           f"({' '.join(self.argv)}).\n{self.log_tail()}", exited=True)
                if self.proc.poll() is not None:
                    raise ServerStartError(f"{self.name} exited with code {self.proc.returncode} before answering on "
                                           f"{self.uri} ({' '.join(self.argv)}).\n{self.log_tail()}", exited=True)
                if self.check is not None: self.check(self)
                try:
                    with socket.create_connection((HOST, self.port), timeout=0.5): pass
                    ping(self.uri, timeout=2.0)
                    return time.monotonic() - t0
                except Exception as e: last = e
                if time.monotonic() > deadline:
                    raise ServerStartError(f"{self.name} did not answer list_collections() on {self.uri} within "
                                           f"{timeout:.0f} s (last error: {last!r}).\n{self.log_tail()}")
                time.sleep(0.2)

    def stop(self, timeout:float=STOP_TIMEOUT)->float|None:
        "Polite signal, then SIGKILL to the whole process group after `timeout`; seconds it took (None if not running)."
        _LIVE.discard(self)
        p, self.proc = self.proc, None
        if p is None: return None
        t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError): os.killpg(p.pid, signal.SIGCONT)  # in case a test froze it
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError): p.send_signal(self.stop_signal)
            try: p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError): os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        # children left in the group (e.g. `milvus` if its wrapper died first): TERM, then KILL
        _kill_group(p.pid, timeout)
        return time.monotonic() - t0

    def restart(self, timeout:float=READY_TIMEOUT)->'ServerProcess':
        "Stop and start again on the same port and data directory."
        self.stop()
        return self.start(timeout)


def _children(pid:int)->list|None:
    "Live child processes of `pid` (None when psutil is missing)."
    try:
        import psutil
    except ImportError: return None
    try: return [c for c in psutil.Process(pid).children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
    except psutil.Error: return []


def _group_alive(pgid:int)->bool:
    try: os.killpg(pgid, 0)
    except ProcessLookupError: return False
    except PermissionError: return True
    return True


def _kill_group(pgid:int, timeout:float):
    if not _group_alive(pgid): return
    with contextlib.suppress(ProcessLookupError): os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline: time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError): os.killpg(pgid, signal.SIGKILL)


def stop_all():
    "Stop every server this process started (registered with atexit as a last resort)."
    for s in list(_LIVE):
        with contextlib.suppress(Exception): s.stop()

atexit.register(stop_all)


def start_lite_server(data_dir, port:int|None=None, timeout:float=READY_TIMEOUT)->ServerProcess:
    "`milvus-lite server --data-dir <data_dir>/data --host 127.0.0.1 --port <free>`, started and answering."
    exe = find_executable('milvus-lite')
    if exe is None: raise FileNotFoundError("the `milvus-lite` executable is not installed (pip install milvus-lite)")
    base = Path(data_dir)
    port = port or free_ports()[0]
    s = ServerProcess('milvus-lite server', [exe, 'server', '--data-dir', base/'data', '--host', HOST, '--port', port],
                      port, base/'data', base/'milvus-lite-server.log')
    return s.start(timeout)


_PORT_FLAGS = ['etcd', 'root-coord', 'proxy', 'proxy-internal', 'query-coord', 'query-node', 'index-coord',
               'index-node', 'data-coord', 'data-node']

class _StartLock:
    "Serialises milvus-server starts across processes (the wrapper picks its metrics port by scanning up from 9091)."
    path = Path(tempfile.gettempdir())/'colpali-milvus-tests-milvus-server-start.lock'
    def __init__(self): self.f = None
    def acquire(self, timeout:float):
        self.f = open(self.path, 'a'); deadline = time.monotonic() + timeout
        while True:
            try: fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB); return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.release(); raise ServerStartError(f"{self.path} stayed locked for {timeout:.0f} s")
                time.sleep(0.2)
    def release(self):
        if self.f is not None:
            with contextlib.suppress(OSError): fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close(); self.f = None


class PendingStandalone:
    "A Milvus 2.3.5 standalone being started in the background; `result()` waits for it (retrying once on early exit)."
    def __init__(self, data_dir, timeout:float=READY_TIMEOUT, attempts:int=2):
        self.exe = find_executable('milvus-server')
        if self.exe is None:
            raise FileNotFoundError("the `milvus-server` executable is not installed (pip install milvus==2.3.5)")
        self.base, self.timeout, self.attempts = Path(data_dir), timeout, attempts
        self.base.mkdir(parents=True, exist_ok=True)
        self.lock, self.server, self.attempt = _StartLock(), None, 0
        self._launch()

    def _launch(self):
        self.attempt += 1
        base = self.base
        ports = dict(zip(_PORT_FLAGS + ['etcd-peer'], free_ports(len(_PORT_FLAGS) + 1)))
        etcd_cfg = base/'etcd-embed.yaml'
        etcd_cfg.write_text(
            f"name: default\n"
            f"listen-client-urls: http://{HOST}:{ports['etcd']}\nadvertise-client-urls: http://{HOST}:{ports['etcd']}\n"
            f"listen-peer-urls: http://{HOST}:{ports['etcd-peer']}\n"
            f"initial-advertise-peer-urls: http://{HOST}:{ports['etcd-peer']}\n"
            f"initial-cluster: default=http://{HOST}:{ports['etcd-peer']}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(('ETCD_', 'MINIO_', 'METRICS_PORT'))}
        env['ETCD_CONFIG_PATH'] = str(etcd_cfg)  # Milvus maps it onto etcd.config.path
        argv = [self.exe, '--data', base]
        for flag in _PORT_FLAGS: argv += [f'--{flag}-port', ports[flag]]
        s = ServerProcess('milvus-server (Milvus 2.3.5 standalone)', argv, ports['proxy'], base,
                          # its wrapper stops milvus on SIGINT only
                          base/'milvus-server.log', env=env, stop_signal=signal.SIGINT,
                          extra_logs=(base/'logs'/'milvus-stderr.log', base/'logs'/'milvus-stdout.log'))
        s.ports, s.check = ports, _check_ports
        self.lock.acquire(self.timeout)
        try: self.server = s.launch()
        except BaseException:
            self.lock.release(); raise
        self.t0 = time.monotonic()

    def result(self)->ServerProcess:
        "The server, once it answers; ServerStartError (with its log tail) if it does not within the timeout."
        while True:
            s = self.server
            try:
                s.wait_ready(max(1.0, self.timeout - (time.monotonic() - self.t0)))
                s.ready_s = time.monotonic() - self.t0
                return s
            except BaseException as e:
                s.stop()
                # a port taken between choosing and binding makes milvus exit early: try again with new ports
                if not (isinstance(e, ServerStartError) and e.exited and self.attempt < self.attempts): raise
                shutil.rmtree(self.base/'data', ignore_errors=True)
                self.lock.release()
                self._launch()
            finally:
                if self.server is s: self.lock.release()

    def cancel(self):
        "Stop the server if it was never collected."
        if self.server is not None: self.server.stop()
        self.lock.release()


def _check_ports(s:ServerProcess):
    "Fail fast when `milvus-server` moved a port: it takes the next free one when the one asked for is busy."
    cfg = s.data_dir/'configs'/'milvus.yaml'
    try:
        if cfg.stat().st_mtime < s.launched_at - 1: return  # not written by this launch yet
        text = cfg.read_text()
    except OSError: return
    m = re.search(r'^proxy:\n(?:[ #].*\n|\n)*?  port: (\d+)', text, re.M)
    if m and int(m.group(1)) != s.port:
        raise ServerStartError(f"{s.name} listens on port {m.group(1)}, not {s.port} as asked: port {s.port} was "
                               f"busy (e.g. TIME_WAIT after a restart; the wrapper binds without SO_REUSEADDR and then "
                               f"scans upward). Start it on new ports instead.\n{s.log_tail()}", exited=True)


def launch_milvus_standalone(data_dir, timeout:float=READY_TIMEOUT)->PendingStandalone:
    "Start the `milvus` PyPI package's standalone Milvus (`milvus-server --data ...`) with every port free; don't wait."
    return PendingStandalone(data_dir, timeout)


def start_milvus_standalone(data_dir, timeout:float=READY_TIMEOUT)->ServerProcess:
    "The `milvus` PyPI package's standalone Milvus, started and answering."
    return PendingStandalone(data_dir, timeout).result()
