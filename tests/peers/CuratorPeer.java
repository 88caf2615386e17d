// A Curator 5.4 peer for fairlock's interoperability tests (compiled by scripts/peers).
//
//   java -cp target/peers:<curator jars> CuratorPeer CONNECT LOCK_PATH
//
// Acquires InterProcessMutex(LOCK_PATH), prints "acquired", holds the lock until a line
// (or end of file) arrives on stdin, releases, prints "released" and exits.
import java.io.BufferedReader;
import java.io.InputStreamReader;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.retry.RetryOneTime;

public class CuratorPeer {
    public static void main(String[] args) throws Exception {
        CuratorFramework client =
            CuratorFrameworkFactory.newClient(args[0], 10000, 5000, new RetryOneTime(100));
        client.start();
        client.blockUntilConnected();
        InterProcessMutex mutex = new InterProcessMutex(client, args[1]);
        mutex.acquire();
        System.out.println("acquired");
        System.out.flush();
        new BufferedReader(new InputStreamReader(System.in)).readLine();
        mutex.release();
        System.out.println("released");
        System.out.flush();
        client.close();
    }
}
