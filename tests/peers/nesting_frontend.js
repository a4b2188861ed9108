// Test peer: a Node.js http frontend for the nesting tests (no packages).
//
// usage: node nesting_frontend.js PORT DOWNSTREAM_BASE
// GET /chain/N waits N*7 mod 20 milliseconds, then GETs
// DOWNSTREAM_BASE/work/N on kept-alive connections and answers 200 once
// that answered 200 (502 otherwise). One event loop serves every request.

"use strict";
const http = require("http");

const [port, downstream] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

http
  .createServer((req, res) => {
    req.resume();
    const n = req.url.slice("/chain/".length);
    setTimeout(() => {
      const up = http.get(`${downstream}/work/${n}`, { agent, headers: { "User-Agent": "clew-e2e-frontend" } }, (ures) => {
        const chunks = [];
        ures.on("data", (c) => chunks.push(c));
        ures.on("end", () => {
          res.writeHead(ures.statusCode === 200 ? 200 : 502, { "Content-Type": "text/plain" });
          res.end(Buffer.concat(chunks));
        });
      });
      up.on("error", (e) => {
        res.writeHead(502, { "Content-Type": "text/plain" });
        res.end(String(e));
      });
    }, (Number(n) * 7) % 20);
  })
  .listen(Number(port), "127.0.0.1", () => console.error(`[node] listening on ${port}`));
