"""Asks the token endpoint for Txn-Tokens with Python requests, as an edge service posts the
RFC 8693 form, and verifies what it gets with PyJWT, the Txn-Token's typ required.

stdin: {"url": ..., "jwks_uri": ..., "issuer": ..., "trust_domain": ..., "ca_file": optional,
        "cases": [{"authorization": optional, "form": {...} or [[name, value], ...],
                   "content_type": optional, "method": optional,
                   "append": optional, raw form text put after the encoded form,
                   "headers": optional, more request headers}]}
stdout: one JSON object per case: {"status": ..., "content_type": ..., "cache_control": ...,
        "www_authenticate": ..., "body": the JSON answer (or the text), "verified": the claims
        PyJWT accepted, or {"error": ...}, for an answer carrying a token}
"""
import json
import ssl
import sys

import jwt
import requests

request = json.load(sys.stdin)
verify = request.get("ca_file", True)
context = ssl.create_default_context(cafile=request["ca_file"]) if "ca_file" in request else None
jwks = jwt.PyJWKClient(request["jwks_uri"], ssl_context=context)


def verified(token):
    try:
        header = jwt.get_unverified_header(token)
        if header.get("typ") != "txntoken+jwt":
            return {"error": f"typ is {header.get('typ')!r}, not txntoken+jwt"}
        key = jwks.get_signing_key_from_jwt(token)
        return jwt.decode(
            token,
            key.key,
            algorithms=[header["alg"]],
            audience=request["trust_domain"],
            issuer=request["issuer"],
            options={"require": ["iat", "exp", "aud", "txn", "sub", "scope", "req_wl"]},
        )
    except Exception as error:  # a refusal is an answer
        return {"error": f"{type(error).__name__}: {error}"}


for case in request["cases"]:
    headers = {}
    if "authorization" in case:
        headers["Authorization"] = case["authorization"]
    data = case["form"]
    if isinstance(data, list):
        data = [tuple(pair) for pair in data]
    headers.update(case.get("headers", {}))
    if "content_type" in case or "append" in case:
        headers["Content-Type"] = case.get("content_type", "application/x-www-form-urlencoded")
        data = requests.models.RequestEncodingMixin._encode_params(data)
    if "append" in case:
        data = data + "&" + case["append"]
    response = requests.request(
        case.get("method", "POST"), request["url"], data=data, headers=headers, verify=verify, timeout=30
    )
    try:
        body = response.json()
    except ValueError:
        body = response.text
    out = {
        "status": response.status_code,
        "content_type": response.headers.get("Content-Type"),
        "cache_control": response.headers.get("Cache-Control"),
        "www_authenticate": response.headers.get("WWW-Authenticate"),
        "body": body,
    }
    if isinstance(body, dict) and "access_token" in body:
        out["verified"] = verified(body["access_token"])
    print(json.dumps(out))
