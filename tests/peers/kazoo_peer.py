"""A kazoo peer for fairlock's interoperability tests (run in the venv scripts/peers makes).

    python kazoo_peer.py CONNECT LOCK_PATH

Acquires kazoo's Lock(LOCK_PATH) with extra_lock_patterns=["-lock-"] (so Curator-named
nodes count as contenders), prints "acquired", holds the lock until a line (or end of file)
arrives on stdin, releases, prints "released" and exits.
"""
import sys

from kazoo.client import KazooClient


def main():
    client = KazooClient(hosts=sys.argv[1], timeout=10)
    client.start(timeout=15)
    lock = client.Lock(sys.argv[2], "kazoo-peer", extra_lock_patterns=["-lock-"])
    lock.acquire()
    print("acquired", flush=True)
    sys.stdin.readline()
    lock.release()
    print("released", flush=True)
    client.stop()
    client.close()


if __name__ == "__main__":
    main()
