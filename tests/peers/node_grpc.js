// Test peer: gRPC on the wire from Node.js's built-in `http2` + `tls` (no
// packages, no protobuf: messages are raw bytes), over TLS. Node links
// OpenSSL statically and exports its API, so Clew's OpenSSL probes see the
// plaintext (unlike grpcio's wheel, whose BoringSSL has no symbols).
//
// usage: node node_grpc.js server PORT --cert C --key K
//                          [--downstream HOST:PORT --downstream-ca PEM]
//                          [--metadata-log FILE] [--name NAME]
//        node node_grpc.js client HOST:PORT --ca PEM STEP...
//
// The server speaks TLS (ALPN h2) and serves service `clew.test.Echo`:
//   Unary   echoes the request; `status:N` ends the call with status code N,
//           `sleep:MS` holds the answer MS milliseconds first.
//   Chain   makes one Unary call to --downstream over TLS (one http2 session,
//           opened at start-up, trusting --downstream-ca) and answers its
//           reply once it completes; UNAVAILABLE if that call fails.
// Any other method ends with UNIMPLEMENTED. Every call's metadata
// (traceparent included) goes to --metadata-log as one JSON line:
// {"method": ..., "metadata": [[k, v], ...]}, as grpc_service.py writes it.
//
// The client runs its steps one after the other on one http2 session:
//   unary | status:N | chain | chain:K (K sequential Chain calls)
// and prints one JSON line per step, as grpc_client.py does:
// {"step", "codes": [int, ...], "messages"}.

"use strict";
const http2 = require("http2");
const fs = require("fs");

const SERVICE = "clew.test.Echo";
const UA = "clew-e2e-node-grpc";
const OK = 0;
const UNKNOWN = 2;
const UNIMPLEMENTED = 12;
const UNAVAILABLE = 14;

function opt(args, name) {
  const i = args.indexOf(name);
  return i < 0 ? undefined : args[i + 1];
}

// One gRPC message: flag byte 0 (not compressed), 4-byte big-endian length.
function frame(msg) {
  const head = Buffer.alloc(5);
  head.writeUInt8(0, 0);
  head.writeUInt32BE(msg.length, 1);
  return Buffer.concat([head, msg]);
}

// The messages of a gRPC body; throws on a truncated or compressed one.
function unframe(buf) {
  const out = [];
  let at = 0;
  while (at < buf.length) {
    if (buf.length - at < 5) throw new Error(`truncated message prefix at ${at}`);
    if (buf[at] !== 0) throw new Error(`compressed message (flag ${buf[at]})`);
    const len = buf.readUInt32BE(at + 1);
    if (buf.length - at - 5 < len) throw new Error(`truncated message at ${at}`);
    out.push(buf.subarray(at + 5, at + 5 + len));
    at += 5 + len;
  }
  return out;
}

function connect(target, caFile) {
  const session = http2.connect(`https://${target}`, {
    ca: fs.readFileSync(caFile),
    ALPNProtocols: ["h2"],
  });
  session.on("error", (e) => console.error(`session ${target}: ${e}`));
  return session;
}

// One unary call on `session`; resolves to {code, message, replies}.
function call(session, method, request) {
  return new Promise((resolve) => {
    const req = session.request({
      ":method": "POST",
      ":scheme": "https",
      ":path": `/${SERVICE}/${method}`,
      "content-type": "application/grpc",
      te: "trailers",
      "user-agent": UA,
    });
    const chunks = [];
    let status = null;
    let grpc = null;
    const take = (h) => {
      if (h["grpc-status"] !== undefined) {
        grpc = { code: Number(h["grpc-status"]), message: decodeURIComponent(h["grpc-message"] || "") };
      }
    };
    req.on("response", (h) => {
      status = Number(h[":status"]);
      take(h); // a trailers-only answer
    });
    req.on("trailers", take);
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      if (status !== 200) return resolve({ code: UNKNOWN, message: `HTTP status ${status}`, replies: [] });
      if (!grpc) return resolve({ code: UNKNOWN, message: "no grpc-status", replies: [] });
      let replies = [];
      try {
        replies = unframe(Buffer.concat(chunks));
      } catch (e) {
        return resolve({ code: UNKNOWN, message: String(e), replies: [] });
      }
      resolve({ ...grpc, replies });
    });
    req.on("error", (e) => resolve({ code: UNAVAILABLE, message: String(e), replies: [] }));
    req.setTimeout(30000, () => req.close(http2.constants.NGHTTP2_CANCEL));
    req.end(frame(request));
  });
}

function server(args) {
  const port = Number(args[0]);
  const name = opt(args, "--name") || "node-grpc";
  const downstream = opt(args, "--downstream");
  const downstreamCa = opt(args, "--downstream-ca");
  const metadataLog = opt(args, "--metadata-log");
  // Opened at start-up, as grpc_service.py's channel is (reopened if it
  // goes away): each Chain's call is then a new stream on a connection
  // that already exists, not a connection opened while serving a call.
  let session = downstream ? connect(downstream, downstreamCa) : null;
  const downstreamSession = () => {
    if (!session || session.closed || session.destroyed) session = connect(downstream, downstreamCa);
    return session;
  };

  const logCall = (method, rawHeaders) => {
    if (!metadataLog) return;
    const md = [];
    for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
      if (!rawHeaders[i].startsWith(":")) md.push([rawHeaders[i], rawHeaders[i + 1]]);
    }
    fs.appendFileSync(metadataLog, JSON.stringify({ method, metadata: md }) + "\n");
  };

  // Ends the call: headers, the reply (if any), then trailers.
  const answer = (stream, code, message, reply) => {
    if (stream.destroyed || stream.closed) return;
    const trailers = { "grpc-status": String(code) };
    if (code !== OK) trailers["grpc-message"] = encodeURIComponent(message || "");
    stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
    stream.on("wantTrailers", () => stream.sendTrailers(trailers));
    stream.end(reply ? frame(reply) : undefined);
  };

  const handle = async (stream, headers, body) => {
    const path = headers[":path"] || "";
    const prefix = `/${SERVICE}/`;
    const method = path.startsWith(prefix) ? path.slice(prefix.length) : path;
    let msgs;
    try {
      msgs = unframe(body);
    } catch (e) {
      return answer(stream, UNKNOWN, String(e));
    }
    const request = msgs[0] || Buffer.alloc(0);
    if (method === "Unary") {
      const text = request.toString();
      if (text.startsWith("sleep:")) await new Promise((r) => setTimeout(r, Number(text.slice(6))));
      if (text.startsWith("status:")) {
        const code = Number(text.slice(7));
        return answer(stream, code, `asked for status ${code}`);
      }
      return answer(stream, OK, "", request);
    }
    if (method === "Chain") {
      if (!downstream) return answer(stream, UNAVAILABLE, "no downstream");
      const r = await call(downstreamSession(), "Unary", request);
      if (r.code !== OK) return answer(stream, UNAVAILABLE, `downstream: ${r.code} ${r.message}`);
      return answer(stream, OK, "", r.replies[0] || Buffer.alloc(0));
    }
    return answer(stream, UNIMPLEMENTED, `unknown method ${path}`);
  };

  const srv = http2.createSecureServer({
    cert: fs.readFileSync(opt(args, "--cert")),
    key: fs.readFileSync(opt(args, "--key")),
    ALPNProtocols: ["h2"],
  });
  srv.on("stream", (stream, headers, _flags, rawHeaders) => {
    const path = headers[":path"] || "";
    logCall(path.startsWith(`/${SERVICE}/`) ? path.slice(SERVICE.length + 2) : path, rawHeaders);
    const chunks = [];
    stream.on("data", (c) => chunks.push(c));
    stream.on("end", () => {
      handle(stream, headers, Buffer.concat(chunks)).catch((e) => {
        console.error(`[${name}] ${path}: ${e.stack || e}`);
        answer(stream, UNKNOWN, String(e));
      });
    });
    stream.on("error", (e) => console.error(`[${name}] stream ${path}: ${e}`));
  });
  srv.on("sessionError", (e) => console.error(`[${name}] session: ${e}`));
  srv.listen(port, "127.0.0.1", () => {
    console.error(`[${name}] gRPC (node http2) on 127.0.0.1:${port} (TLS), downstream ${downstream}`);
  });
}

async function client(args) {
  const target = args[0];
  const ca = opt(args, "--ca");
  const steps = args.slice(1).filter((a, i, all) => a !== "--ca" && all[i - 1] !== "--ca");
  const session = connect(target, ca);
  for (const step of steps) {
    const [name, arg] = step.split(":");
    const codes = [];
    let messages = 0;
    const one = async (method, request) => {
      const r = await call(session, method, Buffer.from(request));
      if (r.code !== OK) console.error(`${step}: ${method} ended ${r.code} ${r.message}`);
      codes.push(r.code);
      messages += r.replies.length;
    };
    if (name === "unary") await one("Unary", "hello");
    else if (name === "status") await one("Unary", `status:${Number(arg)}`);
    else if (name === "chain") {
      for (let i = 0; i < Number(arg || 1); i++) await one("Chain", "chain");
    } else {
      console.error(`unknown step ${step}`);
      process.exit(2);
    }
    console.log(JSON.stringify({ step, codes, messages }));
  }
  session.close();
}

const [mode, ...rest] = process.argv.slice(2);
if (mode === "server") server(rest);
else if (mode === "client") client(rest);
else {
  console.error("usage: node node_grpc.js server|client ...");
  process.exit(2);
}
