"""Independent decoder for Token Status List test vectors.

This is the independent (Python, stdlib-only) decoder used by the Rust test
tests/api/status/vectors.rs. Usage:

    python3 status_list_decode.py VECTORS_JSON OURS_JSON

VECTORS_JSON is tests/clients/status_list_vectors.json: test vectors from the
IETF draft "Token Status List" (draft-ietf-oauth-status-list), each with
name, bits, size, the non-zero statuses and the draft's "lst".
OURS_JSON is an object {name: lst produced by our encoder}.

For each vector it checks that:
  1. the draft's lst (base64url, no padding, zlib) decodes to a byte array
     holding at least `size` entries whose non-zero statuses (bits wide,
     packed least significant bit first) are exactly the vector's statuses;
  2. our lst is base64url without padding, is a valid zlib stream, and
     inflates to exactly the same bytes as the draft's lst.
It prints one line per vector, reports every mismatch on stderr, and exits
1 if anything failed (2 on usage errors).
"""
import base64
import json
import sys
import zlib

B64URL = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def inflate(lst):
    """base64url (no padding) -> zlib-decompressed bytes."""
    raw = base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4))
    return zlib.decompress(raw)


def nonzero_statuses(data, bits):
    """Every non-zero status in data as {index: value}."""
    mask = (1 << bits) - 1
    out = {}
    for i in range(len(data) * 8 // bits):
        value = (data[i * bits // 8] >> ((i * bits) % 8)) & mask
        if value:
            out[i] = value
    return out


def check(vec, ours):
    """Return a list of error strings for one vector (empty if all good)."""
    name, bits, size = vec["name"], vec["bits"], vec["size"]
    errors = []
    if bits not in (1, 2, 4, 8):
        return ["bits is %r, not 1, 2, 4 or 8" % bits]

    # 1. the draft's lst against the vector's statuses
    try:
        draft = inflate(vec["lst"])
    except Exception as e:
        return ["draft lst does not decode: %s" % e]
    if len(draft) * 8 // bits < size:
        errors.append("draft bytes hold %d entries, fewer than size %d"
                      % (len(draft) * 8 // bits, size))
    want = {int(k): v for k, v in vec["statuses"].items()}
    got = nonzero_statuses(draft, bits)
    for i in sorted(set(want) | set(got)):
        if want.get(i, 0) != got.get(i, 0):
            errors.append("status[%d]: vector says %d, draft lst holds %d"
                          % (i, want.get(i, 0), got.get(i, 0)))

    # 2. our lst against the draft's bytes
    bad = sorted(set(ours) - B64URL)
    if bad:
        errors.append("our lst is not unpadded base64url (contains %s)"
                      % " ".join(repr(c) for c in bad))
    try:
        mine = inflate(ours)
    except Exception as e:
        errors.append("our lst does not decode: %s" % e)
        return errors
    if len(mine) != len(draft):
        errors.append("our lst inflates to %d bytes, draft to %d"
                      % (len(mine), len(draft)))
    elif mine != draft:
        first = next(i for i in range(len(mine)) if mine[i] != draft[i])
        errors.append("inflated bytes differ, first at byte %d "
                      "(ours 0x%02x, draft 0x%02x)"
                      % (first, mine[first], draft[first]))
    if not errors:
        print("%s: ok (%d non-zero statuses, %d bytes inflated, ours %d chars,"
              " draft %d chars)" % (name, len(got), len(draft), len(ours),
                                    len(vec["lst"])))
    return errors


def main(argv):
    if len(argv) != 3:
        print("usage: %s VECTORS_JSON OURS_JSON" % argv[0], file=sys.stderr)
        return 2
    try:
        with open(argv[1]) as f:
            vectors = json.load(f)
        with open(argv[2]) as f:
            ours = json.load(f)
    except (OSError, ValueError) as e:
        print("cannot read input: %s" % e, file=sys.stderr)
        return 2
    if not isinstance(vectors, list) or not isinstance(ours, dict):
        print("VECTORS_JSON must be an array, OURS_JSON an object",
              file=sys.stderr)
        return 2

    failed = False
    for vec in vectors:
        name = vec["name"]
        if not isinstance(ours.get(name), str):
            print("%s: OURS_JSON has no lst for this vector" % name,
                  file=sys.stderr)
            failed = True
            continue
        for err in check(vec, ours[name]):
            print("%s: %s" % (name, err), file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
