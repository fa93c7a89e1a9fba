// Verifies RS256 tokens by hand: fetch the JWKS, pick the key by kid, convert it with
// jwk-to-pem, check the signature with crypto.createVerify('RSA-SHA256'), then exp, iss and
// aud. Same stdin/stdout contract as pyjwt_verify.py.
const crypto = require("crypto");
const jwkToPem = require("jwk-to-pem");

const decode = (segment) => JSON.parse(Buffer.from(segment, "base64url").toString("utf8"));

function verify(token, jwks, request) {
  const [headerB64, payloadB64, signatureB64] = token.split(".");
  const header = decode(headerB64);
  if (header.alg !== "RS256") throw new Error(`unexpected alg ${header.alg}`);
  const jwk = jwks.keys.find((key) => key.kid === header.kid);
  if (!jwk) throw new Error(`kid ${header.kid} not found`);
  const verifier = crypto.createVerify("RSA-SHA256");
  verifier.update(`${headerB64}.${payloadB64}`);
  if (!verifier.verify(jwkToPem(jwk), Buffer.from(signatureB64, "base64url"))) throw new Error("invalid signature");
  const claims = decode(payloadB64);
  if (claims.exp <= Date.now() / 1000) throw new Error("expired");
  if (claims.iss !== request.issuer) throw new Error("wrong issuer");
  const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  if (!audiences.includes(request.audience)) throw new Error("wrong audience");
  return claims;
}

async function main() {
  const request = JSON.parse(require("fs").readFileSync(0, "utf8"));
  const jwks = await (await fetch(request.jwks_uri)).json();
  for (const token of request.tokens) {
    try {
      console.log(JSON.stringify({ valid: true, sub: verify(token, jwks, request).sub }));
    } catch (err) {
      console.log(JSON.stringify({ valid: false, error: err.message }));
    }
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
