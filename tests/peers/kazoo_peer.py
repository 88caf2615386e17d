"""A kazoo peer for fairlock's interoperability tests and benchmarks (run in the venv
scripts/peers makes).

    python kazoo_peer.py CONNECT LOCK_PATH                  hold the lock
    python kazoo_peer.py CONNECT LOCK_PATH read             hold the read lock
    python kazoo_peer.py CONNECT LOCK_PATH write            hold the write lock
    python kazoo_peer.py CONNECT LOCK_PATH semaphore N      hold a lease of the semaphore
    python kazoo_peer.py CONNECT LOCK_PATH bench N          benchmark, uncontended
    python kazoo_peer.py CONNECT LOCK_PATH contend S N      benchmark, S sessions
    python kazoo_peer.py CONNECT LOCK_PATH read-contend S N benchmark, S sessions' read locks
    python kazoo_peer.py CONNECT LOCK_PATH semaphore-contend S N L
                                                            benchmark, S sessions' leases of
                                                            a semaphore of L
    python kazoo_peer.py CONNECT LOCK_PATH idle K MS        benchmark, K waiting waiters

Holding: acquires kazoo's Lock(LOCK_PATH) with extra_lock_patterns=["-lock-"] (so
Curator-named nodes count as contenders), prints "acquired", holds the lock until a line (or
end of file) arrives on stdin, releases, prints "released" and exits. "read" and "write" do
the same with kazoo's ReadLock (its nodes: ...__rlock__<seq>) and WriteLock
(...__lock__<seq>), each told the names of the other implementations' nodes it must wait
for: the read lock, writers' (extra_lock_patterns=["__WRIT__", "-lock-"]: Curator's and
fairlock's write locks and mutexes, besides kazoo's own __lock__); the write lock,
everyone's (["__READ__", "__WRIT__", "-lock-"], besides kazoo's __lock__ and __rlock__).
"semaphore N" does the same with kazoo's Semaphore(LOCK_PATH, identifier="kazoo-peer",
max_leases=N) as is: its pool LOCK_PATH (the limit as data, a child <uuid hex> per lease),
its gate the Lock LOCK_PATH-__lock__ (nodes <uuid hex>__lock__<seq>, the only ones it
counts). An acquisition that fails (the semaphore stored another limit: kazoo's ValueError)
prints "failed: <exception type>: <message>" and exits with status 1, in every hold mode.

The benchmark modes print one JSON line: {"elapsed_us": ..., "cpu_us": ..., "latencies_us":
[...]}, cpu_us being the process's CPU time (every thread) over the timed part, after a
warm-up (200 pairs; 5 acquisitions per session). "idle" holds the lock, queues K waiters
(threads of one client) behind it and prints the CPU time of queueing them and of MS
milliseconds before and after: {"enqueue_cpu_us", "alone_cpu_us", "waiting_cpu_us"}.
"""
import json
import os
import sys
import threading
import time

from kazoo.client import KazooClient


def connect(hosts):
    client = KazooClient(hosts=hosts, timeout=10)
    client.start(timeout=15)
    return client


def lock(client, path):
    return client.Lock(path, "kazoo-peer", extra_lock_patterns=["-lock-"])


def read_lock(client, path):
    return client.ReadLock(path, "kazoo-peer", extra_lock_patterns=["__WRIT__", "-lock-"])


def write_lock(client, path):
    return client.WriteLock(
        path, "kazoo-peer", extra_lock_patterns=["__READ__", "__WRIT__", "-lock-"]
    )


def semaphore(limit):
    return lambda client, path: client.Semaphore(path, identifier="kazoo-peer", max_leases=limit)


def report(elapsed, cpu, latencies):
    print(
        json.dumps(
            {"elapsed_us": int(elapsed * 1e6), "cpu_us": int(cpu * 1e6), "latencies_us": latencies}
        ),
        flush=True,
    )


def bench(hosts, path, n):
    client = connect(hosts)
    mutex = lock(client, path)
    for _ in range(200):
        mutex.acquire()
        mutex.release()
    latencies = []
    cpu = time.process_time()
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        mutex.acquire()
        mutex.release()
        latencies.append(int((time.perf_counter() - t0) * 1e6))
    report(time.perf_counter() - start, time.process_time() - cpu, latencies)
    client.stop()
    client.close()


def contend(hosts, path, sessions, n, make=lock):
    clients = [connect(hosts) for _ in range(sessions)]
    latencies = []
    warm = threading.Barrier(sessions + 1)
    go = threading.Event()

    def run(client):
        mutex = make(client, path)
        for _ in range(5):
            mutex.acquire()
            mutex.release()
        warm.wait()
        go.wait()
        for _ in range(n):
            t0 = time.perf_counter()
            mutex.acquire()
            latencies.append(int((time.perf_counter() - t0) * 1e6))
            mutex.release()

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    warm.wait()
    cpu = time.process_time()
    start = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    report(time.perf_counter() - start, time.process_time() - cpu, latencies)
    for c in clients:
        c.stop()
        c.close()


def idle(hosts, path, waiters, ms):
    client = connect(hosts)
    lock(client, path).acquire()
    cpu = time.process_time()
    time.sleep(ms / 1000)
    alone = time.process_time() - cpu
    cpu = time.process_time()
    for _ in range(waiters):
        threading.Thread(target=lock(client, path).acquire, daemon=True).start()
    # Queued: every waiter's node is in the lock's directory.
    while len(client.get_children(path)) < waiters + 1:
        time.sleep(0.01)
    enqueue = time.process_time() - cpu
    time.sleep(0.5)  # as fairlock-bench's idle run: let the last watches be set
    cpu = time.process_time()
    time.sleep(ms / 1000)
    waiting = time.process_time() - cpu
    us = lambda t: int(t * 1e6)
    print(
        json.dumps(
            {"enqueue_cpu_us": us(enqueue), "alone_cpu_us": us(alone), "waiting_cpu_us": us(waiting)}
        ),
        flush=True,
    )
    # The waiters' threads block in acquire: leave without waiting for them.
    os._exit(0)


def hold(hosts, path, make=lock):
    client = connect(hosts)
    mutex = make(client, path)
    try:
        mutex.acquire()
    except Exception as e:
        print("failed: %s: %s" % (type(e).__name__, e), flush=True)
        client.stop()
        client.close()
        sys.exit(1)
    print("acquired", flush=True)
    sys.stdin.readline()
    mutex.release()
    print("released", flush=True)
    client.stop()
    client.close()


def main():
    hosts, path = sys.argv[1], sys.argv[2]
    mode = sys.argv[3] if len(sys.argv) > 3 else "hold"
    if mode == "bench":
        bench(hosts, path, int(sys.argv[4]))
    elif mode == "contend":
        contend(hosts, path, int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "read-contend":
        contend(hosts, path, int(sys.argv[4]), int(sys.argv[5]), read_lock)
    elif mode == "semaphore-contend":
        contend(hosts, path, int(sys.argv[4]), int(sys.argv[5]), semaphore(int(sys.argv[6])))
    elif mode == "idle":
        idle(hosts, path, int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "read":
        hold(hosts, path, read_lock)
    elif mode == "write":
        hold(hosts, path, write_lock)
    elif mode == "semaphore":
        hold(hosts, path, semaphore(int(sys.argv[4])))
    else:
        hold(hosts, path)


if __name__ == "__main__":
    main()
