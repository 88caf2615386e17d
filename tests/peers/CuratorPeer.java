// A Curator 5.4 peer for fairlock's interoperability tests (compiled by scripts/peers).
//
//   java -cp target/peers:<curator jars> CuratorPeer CONNECT PATH           InterProcessMutex
//   java -cp target/peers:<curator jars> CuratorPeer CONNECT PATH latch ID  LeaderLatch
//
// Acquires the mutex (or leadership), prints "acquired", holds it until a line (or end of
// file) arrives on stdin, releases (or closes the latch), prints "released" and exits.
import java.io.BufferedReader;
import java.io.InputStreamReader;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.retry.RetryOneTime;

public class CuratorPeer {
    public static void main(String[] args) throws Exception {
        CuratorFramework client =
            CuratorFrameworkFactory.newClient(args[0], 10000, 5000, new RetryOneTime(100));
        client.start();
        client.blockUntilConnected();
        BufferedReader stdin = new BufferedReader(new InputStreamReader(System.in));
        if (args.length > 2 && args[2].equals("latch")) {
            LeaderLatch latch = new LeaderLatch(client, args[1], args[3]);
            latch.start();
            latch.await();
            acquired();
            stdin.readLine();
            latch.close();
        } else {
            InterProcessMutex mutex = new InterProcessMutex(client, args[1]);
            mutex.acquire();
            acquired();
            stdin.readLine();
            mutex.release();
        }
        System.out.println("released");
        System.out.flush();
        client.close();
    }

    private static void acquired() {
        System.out.println("acquired");
        System.out.flush();
    }
}
