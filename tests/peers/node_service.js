// Test peer: a Node.js HTTP server (no packages) that makes one downstream
// request per incoming request, on kept-alive connections.
//
// usage: node node_service.js [HOST:]PORT DOWNSTREAM_URL [CERT KEY]
// Every request is answered 200 with the downstream's body once the
// downstream GET of DOWNSTREAM_URL answered 200; 502 otherwise. With CERT
// and KEY (PEM files) the server speaks HTTPS; an https:// downstream is
// called over TLS without verifying its certificate. HOST defaults to
// 127.0.0.1.

"use strict";
const http = require("http");
const https = require("https");
const fs = require("fs");

const [listen, downstream, cert, key] = process.argv.slice(2);
if (!listen || !downstream) {
  console.error("usage: node node_service.js [HOST:]PORT DOWNSTREAM_URL [CERT KEY]");
  process.exit(2);
}
const colon = listen.lastIndexOf(":"); // HOST may be IPv6 ("::")
const [host, port] = colon < 0 ? ["127.0.0.1", listen] : [listen.slice(0, colon), listen.slice(colon + 1)];
const client = downstream.startsWith("https:") ? https : http;
const agent = new client.Agent({ keepAlive: true, maxSockets: 64, rejectUnauthorized: false });
let failures = 0;

const handler = (req, res) => {
  req.resume();
  const up = client.get(downstream, { agent, headers: { "User-Agent": "clew-e2e-node" } }, (ures) => {
    const chunks = [];
    ures.on("data", (c) => chunks.push(c));
    ures.on("end", () => {
      const ok = ures.statusCode === 200;
      if (!ok && failures++ < 20) console.error(`downstream answered ${ures.statusCode}`);
      res.writeHead(ok ? 200 : 502, { "Content-Type": "text/plain" });
      res.end(Buffer.concat(chunks));
    });
  });
  up.on("error", (e) => {
    if (failures++ < 20) console.error(`downstream error: ${e}`);
    res.writeHead(502, { "Content-Type": "text/plain" });
    res.end(String(e));
  });
};
const server = cert
  ? https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, handler)
  : http.createServer(handler);
server.keepAliveTimeout = 60000;
server.listen(Number(port), host, () => {
  console.error(`[node] listening on ${host}:${port}, downstream ${downstream}`);
});
