// Test peer: Node.js `http2` (no packages), server and client.
//
// usage: node node_h2.js server [HOST:]PORT [--downstream URL] [--cert C --key K]
//        node node_h2.js client URL COUNT [--concurrency N]
// The server answers GET /work... 200 "ok" and /fail 500; any other path is
// answered with the downstream's answer to one GET of URL (on one http2
// session, opened on first use), or 502 if that fails. With --cert/--key it
// speaks TLS (ALPN h2). The client sends COUNT GETs of URL on one http2
// session, N at a time (default 1), prints every status on its own line, and
// exits non-zero unless all were 200. https:// URLs are not verified.

"use strict";
const http2 = require("http2");
const fs = require("fs");

const UA = "clew-e2e-node-h2";

function opt(args, name) {
  const i = args.indexOf(name);
  return i < 0 ? undefined : args[i + 1];
}

// One GET on `session`; resolves to the status (0 on error) and body.
function get(session, url) {
  return new Promise((resolve) => {
    const u = new URL(url);
    const req = session.request({ ":method": "GET", ":path": u.pathname + u.search, "user-agent": UA });
    let status = 0;
    const chunks = [];
    req.on("response", (h) => (status = h[":status"]));
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve({ status, body: Buffer.concat(chunks) }));
    req.on("error", (e) => {
      console.error(`request ${url}: ${e}`);
      resolve({ status: 0, body: Buffer.from(String(e)) });
    });
    req.end();
  });
}

function connect(url) {
  const session = http2.connect(url, { rejectUnauthorized: false });
  session.on("error", (e) => console.error(`session ${url}: ${e}`));
  return session;
}

function server(args) {
  const listen = args[0];
  const colon = listen.lastIndexOf(":");
  const [host, port] = colon < 0 ? ["127.0.0.1", listen] : [listen.slice(0, colon), listen.slice(colon + 1)];
  const downstream = opt(args, "--downstream");
  const cert = opt(args, "--cert");
  let session = null;
  const handler = async (req, res) => {
    req.resume();
    const path = req.url;
    if (path.startsWith("/work")) {
      res.writeHead(200, { "content-type": "text/plain" });
      return res.end("ok");
    }
    if (path === "/fail") {
      res.writeHead(500, { "content-type": "text/plain" });
      return res.end("fail");
    }
    if (!downstream) {
      res.writeHead(404);
      return res.end();
    }
    if (!session || session.closed || session.destroyed) session = connect(downstream);
    const up = await get(session, downstream);
    res.writeHead(up.status === 200 ? 200 : 502, { "content-type": "text/plain" });
    res.end(up.body);
  };
  const srv = cert
    ? http2.createSecureServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(opt(args, "--key")) }, handler)
    : http2.createServer(handler);
  srv.listen(Number(port), host, () => {
    console.error(`[node-h2] listening on ${host}:${port}${cert ? " (TLS)" : ""}, downstream ${downstream}`);
  });
}

async function client(args) {
  const [url, count] = args;
  const concurrency = Number(opt(args, "--concurrency") || 1);
  const session = connect(url);
  let left = Number(count);
  let bad = 0;
  const worker = async () => {
    while (left > 0) {
      left--;
      const r = await get(session, url);
      console.log(r.status);
      if (r.status !== 200) bad++;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  session.close();
  process.exitCode = bad ? 1 : 0;
}

const [mode, ...rest] = process.argv.slice(2);
if (mode === "server") server(rest);
else if (mode === "client") client(rest);
else {
  console.error("usage: node node_h2.js server|client ...");
  process.exit(2);
}
