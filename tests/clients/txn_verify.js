// Verifies Txn-Tokens with jose (panva) as its documentation shows, requiring the draft's
// typ: createRemoteJWKSet on the JWKS URL, then jwtVerify with typ "txntoken+jwt", the trust
// domain as audience and the authority as issuer.
// stdin: {"jwks_uri", "issuer", "trust_domain", "algorithms", "tokens"}
// stdout: one JSON object per token: {"valid": true, "txn", "sub"} or {"valid": false, "error"}
const { createRemoteJWKSet, jwtVerify } = require("jose");

async function main() {
  const request = JSON.parse(require("fs").readFileSync(0, "utf8"));
  const jwks = createRemoteJWKSet(new URL(request.jwks_uri));
  for (const token of request.tokens) {
    let result;
    try {
      const { payload } = await jwtVerify(token, jwks, {
        algorithms: request.algorithms,
        issuer: request.issuer,
        audience: request.trust_domain,
        typ: "txntoken+jwt",
        requiredClaims: ["txn", "req_wl", "scope"],
      });
      result = { valid: true, txn: payload.txn, sub: payload.sub };
    } catch (err) {
      result = { valid: false, error: `${err.code || err.name}: ${err.message}` };
    }
    console.log(JSON.stringify(result));
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
