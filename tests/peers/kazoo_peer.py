"""A kazoo peer for fairlock's interoperability tests and benchmarks (run in the venv
scripts/peers makes).

    python kazoo_peer.py CONNECT LOCK_PATH                  hold the lock
    python kazoo_peer.py CONNECT LOCK_PATH bench N          benchmark, uncontended
    python kazoo_peer.py CONNECT LOCK_PATH contend S N      benchmark, S sessions

Holding: acquires kazoo's Lock(LOCK_PATH) with extra_lock_patterns=["-lock-"] (so
Curator-named nodes count as contenders), prints "acquired", holds the lock until a line (or
end of file) arrives on stdin, releases, prints "released" and exits.

The benchmark modes print one JSON line: {"elapsed_us": ..., "latencies_us": [...]}.
"""
import json
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


def report(elapsed, latencies):
    print(json.dumps({"elapsed_us": int(elapsed * 1e6), "latencies_us": latencies}), flush=True)


def bench(hosts, path, n):
    client = connect(hosts)
    mutex = lock(client, path)
    for _ in range(50):
        mutex.acquire()
        mutex.release()
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        mutex.acquire()
        mutex.release()
        latencies.append(int((time.perf_counter() - t0) * 1e6))
    report(time.perf_counter() - start, latencies)
    client.stop()
    client.close()


def contend(hosts, path, sessions, n):
    clients = [connect(hosts) for _ in range(sessions)]
    latencies = []
    go = threading.Event()

    def run(client):
        mutex = lock(client, path)
        go.wait()
        for _ in range(n):
            t0 = time.perf_counter()
            mutex.acquire()
            latencies.append(int((time.perf_counter() - t0) * 1e6))
            mutex.release()

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    start = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    report(time.perf_counter() - start, latencies)
    for c in clients:
        c.stop()
        c.close()


def hold(hosts, path):
    client = connect(hosts)
    mutex = lock(client, path)
    mutex.acquire()
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
    else:
        hold(hosts, path)


if __name__ == "__main__":
    main()
