"""Verifies tokens with PyJWT exactly as its documentation shows: PyJWKClient on the JWKS URL,
then jwt.decode with pinned algorithms, issuer and audience.

stdin: {"jwks_uri": ..., "issuer": ..., "audience": ..., "algorithms": [...], "tokens": [...]}
stdout: one JSON object per token: {"valid": true, "sub": ...} or {"valid": false, "error": ...}
"""
import json
import sys

import jwt

request = json.load(sys.stdin)
client = jwt.PyJWKClient(request["jwks_uri"])
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
