// Test peer: a Java frontend for the nesting tests (JDK only, one file).
//
// usage: java NestingFrontend.java PORT DOWNSTREAM_BASE MODE
// GET /chain/N waits N*7 mod 20 milliseconds, then GETs
// DOWNSTREAM_BASE/work/N (HttpURLConnection, kept alive) and answers 200
// once that answered 200. The server's handlers run on a fixed pool of 16
// threads (an ExecutorService). MODE "direct": the handler's thread makes
// the call; "handoff": the handler submits the call to a second pool of 4
// threads and waits for its result, as services that fan out work do;
// "virtual" (Java 21+): each request runs on a virtual thread of its own,
// which makes the call (its blocking socket calls unmount it from its
// carrier thread, so it may resume on another).
//
// Compiled for Java 17 (`javac --release 17`), so Java 21's API is reached
// by reflection.

import com.sun.net.httpserver.HttpServer;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.URL;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

public class NestingFrontend {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        String downstream = args[1];
        String mode = args[2];
        boolean handoff = mode.equals("handoff");
        ExecutorService calls = Executors.newFixedThreadPool(4);
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 64);
        server.createContext("/chain/", exchange -> {
            String n = exchange.getRequestURI().getPath().substring("/chain/".length());
            int status;
            byte[] body;
            try {
                Thread.sleep(Integer.parseInt(n) * 7 % 20);
                byte[] got = handoff
                    ? calls.submit(() -> get(downstream + "/work/" + n)).get()
                    : get(downstream + "/work/" + n);
                status = 200;
                body = got;
            } catch (Exception e) {
                status = 502;
                body = e.toString().getBytes();
            }
            exchange.sendResponseHeaders(status, body.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(body);
            }
        });
        server.setExecutor(
            mode.equals("virtual")
                ? (ExecutorService) Executors.class
                    .getMethod("newVirtualThreadPerTaskExecutor")
                    .invoke(null)
                : Executors.newFixedThreadPool(16));
        server.start();
        System.err.println("listening on " + port);
    }

    static byte[] get(String url) throws Exception {
        HttpURLConnection c = (HttpURLConnection) new URL(url).openConnection();
        c.setRequestProperty("User-Agent", "clew-e2e-frontend");
        if (c.getResponseCode() != 200) {
            throw new Exception("downstream answered " + c.getResponseCode());
        }
        try (InputStream in = c.getInputStream()) {
            return in.readAllBytes();
        }
    }
}
