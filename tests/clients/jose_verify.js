// Verifies tokens with jose (panva) exactly as its documentation shows: createRemoteJWKSet on
// the JWKS URL, then jwtVerify with pinned algorithms, issuer and audience. Same stdin/stdout
// contract as pyjwt_verify.py.
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
        audience: request.audience,
      });
      result = { valid: true, sub: payload.sub };
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
