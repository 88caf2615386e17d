// A Curator 5.4 peer for fairlock's interoperability tests (compiled by scripts/peers).
//
//   java -cp target/peers:<curator jars> CuratorPeer CONNECT PATH           InterProcessMutex
//   java -cp target/peers:<curator jars> CuratorPeer CONNECT PATH read      InterProcessReadWriteLock
//   java -cp target/peers:<curator jars> CuratorPeer CONNECT PATH write     (readLock(), writeLock())
//   java -cp target/peers:<curator jars> CuratorPeer CONNECT PATH latch ID  LeaderLatch
//   java -cp target/peers:<curator jars> CuratorPeer CONNECT PATH bench N   (benchmark)
//   java -cp target/peers:<curator jars> CuratorPeer CONNECT PATH contend S N
//   java -cp target/peers:<curator jars> CuratorPeer CONNECT PATH read-contend S N  (readLock())
//   java -cp target/peers:<curator jars> CuratorPeer CONNECT PATH semaphore-contend S N L
//                                                       (InterProcessSemaphoreV2, L leases)
//   java -cp target/peers:<curator jars> CuratorPeer CONNECT PATH idle K MS
//
// -Dfairlock.session_ms=MS sets the session timeout (default 10000).
//
// Acquires the mutex (the read or write lock, or leadership), prints "acquired", holds it
// until a line (or end of file) arrives on stdin, releases (or closes the latch), prints
// "released" and exits.
// The benchmark modes print one JSON line: {"elapsed_us": ..., "cpu_us": ..., "latencies_us":
// [...]}, cpu_us being the process's CPU time (every thread, JIT and GC included) over the
// timed part: "bench" times N uncontended acquire+release pairs (after 200 for warm-up);
// "contend" runs S clients (one session each) doing N acquire+release each on one lock,
// timing each wait (after 5 each for warm-up), "semaphore-contend" the same with a lease of
// an InterProcessSemaphoreV2 of L leases for the lock; "idle" holds the lock, queues K waiters
// (threads of one client) behind it and reports the CPU time of queueing them and of MS
// milliseconds before and after, as {"enqueue_cpu_us", "alone_cpu_us", "waiting_cpu_us"}.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.lang.management.ManagementFactory;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.CountDownLatch;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.framework.recipes.locks.InterProcessReadWriteLock;
import org.apache.curator.framework.recipes.locks.InterProcessSemaphoreV2;
import org.apache.curator.framework.recipes.locks.Lease;
import org.apache.curator.retry.RetryOneTime;

public class CuratorPeer {
    // The session timeout (-Dfairlock.session_ms=2000 for the failover benchmark's kill -9).
    static final int SESSION_MS = Integer.getInteger("fairlock.session_ms", 10000);

    static CuratorFramework connect(String connect) throws Exception {
        CuratorFramework client =
            CuratorFrameworkFactory.newClient(connect, SESSION_MS, 5000, new RetryOneTime(100));
        client.start();
        client.blockUntilConnected();
        return client;
    }

    // The process's CPU time (user + system, every thread), in nanoseconds.
    static long cpuNanos() {
        return ((com.sun.management.OperatingSystemMXBean)
                ManagementFactory.getOperatingSystemMXBean()).getProcessCpuTime();
    }

    static void report(long elapsedNanos, long cpuNanos, List<Long> latencies) {
        StringBuilder out = new StringBuilder("{\"elapsed_us\": " + elapsedNanos / 1000);
        out.append(", \"cpu_us\": ").append(cpuNanos / 1000);
        out.append(", \"latencies_us\": [");
        for (int i = 0; i < latencies.size(); i++) {
            out.append(i == 0 ? "" : ",").append(latencies.get(i));
        }
        System.out.println(out.append("]}"));
        System.out.flush();
    }

    static void bench(CuratorFramework client, String path, int n) throws Exception {
        InterProcessMutex mutex = new InterProcessMutex(client, path);
        for (int i = 0; i < 200; i++) {
            mutex.acquire();
            mutex.release();
        }
        List<Long> latencies = new ArrayList<>();
        long cpu = cpuNanos();
        long start = System.nanoTime();
        for (int i = 0; i < n; i++) {
            long t0 = System.nanoTime();
            mutex.acquire();
            mutex.release();
            latencies.add((System.nanoTime() - t0) / 1000);
        }
        report(System.nanoTime() - start, cpuNanos() - cpu, latencies);
    }

    // What "contend" takes and lets go of, once per round.
    interface Turn {
        void acquire() throws Exception;

        void release() throws Exception;
    }

    // The turn of a contend mode: a lease of a semaphore of `leases` (mode "semaphore"),
    // else the lock `held` gives.
    static Turn turn(CuratorFramework client, String path, String mode, int leases) {
        if (mode.equals("semaphore")) {
            InterProcessSemaphoreV2 semaphore = new InterProcessSemaphoreV2(client, path, leases);
            return new Turn() {
                Lease lease;

                public void acquire() throws Exception {
                    lease = semaphore.acquire();
                }

                public void release() throws Exception {
                    semaphore.returnLease(lease);
                }
            };
        }
        InterProcessMutex mutex = held(client, path, mode);
        return new Turn() {
            public void acquire() throws Exception {
                mutex.acquire();
            }

            public void release() throws Exception {
                mutex.release();
            }
        };
    }

    static void contend(String connect, String path, String mode, int sessions, int n)
            throws Exception {
        contend(connect, path, mode, sessions, n, 1);
    }

    static void contend(String connect, String path, String mode, int sessions, int n, int leases)
            throws Exception {
        List<Long> latencies = Collections.synchronizedList(new ArrayList<>());
        List<CuratorFramework> clients = new ArrayList<>();
        for (int s = 0; s < sessions; s++) {
            clients.add(connect(connect));
        }
        CountDownLatch warm = new CountDownLatch(sessions);
        CountDownLatch go = new CountDownLatch(1);
        List<Thread> threads = new ArrayList<>();
        for (CuratorFramework c : clients) {
            Thread t = new Thread(() -> {
                try {
                    Turn mutex = turn(c, path, mode, leases);
                    for (int i = 0; i < 5; i++) {
                        mutex.acquire();
                        mutex.release();
                    }
                    warm.countDown();
                    go.await();
                    for (int i = 0; i < n; i++) {
                        long t0 = System.nanoTime();
                        mutex.acquire();
                        latencies.add((System.nanoTime() - t0) / 1000);
                        mutex.release();
                    }
                } catch (Exception e) {
                    throw new RuntimeException(e);
                }
            });
            t.start();
            threads.add(t);
        }
        warm.await();
        long cpu = cpuNanos();
        long start = System.nanoTime();
        go.countDown();
        for (Thread t : threads) {
            t.join();
        }
        report(System.nanoTime() - start, cpuNanos() - cpu, latencies);
        for (CuratorFramework c : clients) {
            c.close();
        }
    }

    static void idle(CuratorFramework client, String path, int waiters, long ms) throws Exception {
        InterProcessMutex holder = new InterProcessMutex(client, path);
        holder.acquire();
        long cpu = cpuNanos();
        Thread.sleep(ms);
        long alone = cpuNanos() - cpu;
        cpu = cpuNanos();
        for (int i = 0; i < waiters; i++) {
            Thread t = new Thread(() -> {
                try {
                    new InterProcessMutex(client, path).acquire();
                } catch (Exception e) {
                    // The process exits with the lock still held.
                }
            });
            t.setDaemon(true);
            t.start();
        }
        // Queued: every waiter's node is in the lock's directory.
        while (client.getChildren().forPath(path).size() < waiters + 1) {
            Thread.sleep(10);
        }
        long enqueue = cpuNanos() - cpu;
        Thread.sleep(500); // as fairlock-bench's idle run: let the last watches be set
        cpu = cpuNanos();
        Thread.sleep(ms);
        long waiting = cpuNanos() - cpu;
        System.out.println("{\"enqueue_cpu_us\": " + enqueue / 1000 + ", \"alone_cpu_us\": "
            + alone / 1000 + ", \"waiting_cpu_us\": " + waiting / 1000 + "}");
        System.out.flush();
    }

    public static void main(String[] args) throws Exception {
        if (args.length > 2 && args[2].equals("contend")) {
            contend(args[0], args[1], "", Integer.parseInt(args[3]), Integer.parseInt(args[4]));
            return;
        }
        if (args.length > 2 && args[2].equals("semaphore-contend")) {
            contend(args[0], args[1], "semaphore", Integer.parseInt(args[3]),
                Integer.parseInt(args[4]), Integer.parseInt(args[5]));
            return;
        }
        if (args.length > 2 && args[2].equals("read-contend")) {
            contend(args[0], args[1], "read", Integer.parseInt(args[3]), Integer.parseInt(args[4]));
            return;
        }
        CuratorFramework client = connect(args[0]);
        if (args.length > 2 && args[2].equals("idle")) {
            idle(client, args[1], Integer.parseInt(args[3]), Long.parseLong(args[4]));
            System.exit(0);
        }
        if (args.length > 2 && args[2].equals("bench")) {
            bench(client, args[1], Integer.parseInt(args[3]));
            client.close();
            return;
        }
        BufferedReader stdin = new BufferedReader(new InputStreamReader(System.in));
        if (args.length > 2 && args[2].equals("latch")) {
            LeaderLatch latch = new LeaderLatch(client, args[1], args[3]);
            latch.start();
            latch.await();
            acquired();
            stdin.readLine();
            latch.close();
        } else {
            InterProcessMutex mutex = held(client, args[1], args.length > 2 ? args[2] : "");
            mutex.acquire();
            acquired();
            stdin.readLine();
            mutex.release();
        }
        System.out.println("released");
        System.out.flush();
        client.close();
    }

    // The lock the hold modes take: "read" and "write" are the sides of an
    // InterProcessReadWriteLock (nodes _c_<uuid>-__READ__<seq>, -__WRIT__<seq>), anything
    // else is an InterProcessMutex (_c_<uuid>-lock-<seq>).
    static InterProcessMutex held(CuratorFramework client, String path, String mode) {
        switch (mode) {
            case "read":
                return new InterProcessReadWriteLock(client, path).readLock();
            case "write":
                return new InterProcessReadWriteLock(client, path).writeLock();
            default:
                return new InterProcessMutex(client, path);
        }
    }

    private static void acquired() {
        System.out.println("acquired");
        System.out.flush();
    }
}
