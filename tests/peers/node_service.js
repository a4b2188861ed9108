// Test peer: a Node.js HTTP server (no packages) that makes one downstream
// request per incoming request, on kept-alive connections.
//
// usage: node node_service.js PORT DOWNSTREAM_URL
// Every request is answered 200 with the downstream's body once the
// downstream GET of DOWNSTREAM_URL answered 200; 502 otherwise.

"use strict";
const http = require("http");

const [port, downstream] = process.argv.slice(2);
if (!port || !downstream) {
  console.error("usage: node node_service.js PORT DOWNSTREAM_URL");
  process.exit(2);
}
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
let failures = 0;

const server = http.createServer((req, res) => {
  req.resume();
  const up = http.get(downstream, { agent, headers: { "User-Agent": "clew-e2e-node" } }, (ures) => {
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
});
server.keepAliveTimeout = 60000;
server.listen(Number(port), "127.0.0.1", () => {
  console.error(`[node] listening on 127.0.0.1:${port}, downstream ${downstream}`);
});
