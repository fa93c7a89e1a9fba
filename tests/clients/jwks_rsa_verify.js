// Verifies tokens with jsonwebtoken + jwks-rsa exactly as their documentation shows:
// jwksClient({jwksUri, cache: true, rateLimit: true}), getSigningKey(kid), jwt.verify with
// pinned algorithms, issuer and audience. Same stdin/stdout contract as pyjwt_verify.py.
const jwt = require("jsonwebtoken");
const jwksClient = require("jwks-rsa");

async function main() {
  const request = JSON.parse(require("fs").readFileSync(0, "utf8"));
  const client = jwksClient({ jwksUri: request.jwks_uri, cache: true, rateLimit: true });
  const getKey = (header, callback) => {
    client.getSigningKey(header.kid, (err, key) => callback(err, key && key.getPublicKey()));
  };
  for (const token of request.tokens) {
    const result = await new Promise((resolve) => {
      jwt.verify(
        token,
        getKey,
        { algorithms: request.algorithms, issuer: request.issuer, audience: request.audience },
        (err, claims) => resolve(err ? { valid: false, error: `${err.name}: ${err.message}` } : { valid: true, sub: claims.sub }),
      );
    });
    console.log(JSON.stringify(result));
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
