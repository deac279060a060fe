// A Node.js peer for crates/mtls-cli/tests/gateway_interop.rs: one GET through `https.request`
// or axios with an `https.Agent` built exactly as the seed's examples build it.
//
// Usage (cwd tests/node, after `npm ci`): node client.js https|axios URL CA_FILE [CERT_FILE KEY_FILE]
// Prints one JSON line: {"status": N, "body": ...} for an HTTP answer, {"error": CODE, "detail": ...}
// for a TLS or connection failure. Always exits 0 unless the arguments are wrong.
"use strict";

const fs = require("fs");
const https = require("https");

const [mode, url, ca, cert, key] = process.argv.slice(2);
if (!["https", "axios"].includes(mode) || !url || !ca) {
  process.stderr.write("usage: node client.js https|axios URL CA_FILE [CERT_FILE KEY_FILE]\n");
  process.exit(2);
}

const agentOptions = { ca: fs.readFileSync(ca), rejectUnauthorized: true };
if (cert) {
  agentOptions.cert = fs.readFileSync(cert);
  agentOptions.key = fs.readFileSync(key);
}
const httpsAgent = new https.Agent(agentOptions);

let reported = false;
function report(result) {
  if (reported) return;
  reported = true;
  process.stdout.write(JSON.stringify(result) + "\n");
  httpsAgent.destroy();
}
function failure(e) {
  return { error: (e && e.code) || "error", detail: String(e) };
}

if (mode === "https") {
  const req = https.request(url, { agent: httpsAgent, timeout: 10000 }, (res) => {
    let body = "";
    res.setEncoding("utf8");
    res.on("data", (chunk) => (body += chunk));
    res.on("end", () => report({ status: res.statusCode, body }));
    res.on("error", (e) => report(failure(e)));
  });
  req.on("timeout", () => req.destroy(new Error("timeout")));
  req.on("error", (e) => report(failure(e)));
  req.end();
} else {
  const axios = require("axios");
  const client = axios.create({ httpsAgent, timeout: 10000 });
  client
    .get(url)
    .then((res) => report({ status: res.status, body: res.data }))
    .catch((e) =>
      report(e.response ? { status: e.response.status, body: e.response.data } : failure(e)),
    );
}
