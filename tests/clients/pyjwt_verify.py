"""Verifies tokens with PyJWT exactly as its documentation shows: PyJWKClient on the JWKS URL,
then jwt.decode with pinned algorithms, issuer and audience.

stdin: {"jwks_uri": ..., "issuer": ..., "audience": ..., "algorithms": [...], "tokens": [...],
        "ca_file": optional, the CA to trust for an https jwks_uri}
stdout: one JSON object per token: {"valid": true, "sub": ...} or {"valid": false, "error": ...}
"""
import json
import ssl
import sys

import jwt

request = json.load(sys.stdin)
# A private CA for an https JWKS URL, as PyJWT documents it: an SSL context.
context = ssl.create_default_context(cafile=request["ca_file"]) if "ca_file" in request else None
client = jwt.PyJWKClient(request["jwks_uri"], ssl_context=context)
for token in request["tokens"]:
    try:
        signing_key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            signing_key.key,
            algorithms=request["algorithms"],
            issuer=request["issuer"],
            audience=request["audience"],
        )
        print(json.dumps({"valid": True, "sub": claims["sub"]}))
    except Exception as error:  # any rejection is an answer, not a crash
        print(json.dumps({"valid": False, "error": f"{type(error).__name__}: {error}"}))
