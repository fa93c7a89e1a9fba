# syntax=docker/dockerfile:1
# token-authority container image.
#
#   docker build -t ghcr.io/token-authority/token-authority:0.1.0 .
#   docker build --target softhsm -t ghcr.io/token-authority/token-authority:0.1.0-softhsm .
#
# The first is the image the chart runs by default (the last stage, distroless). The second
# adds SoftHSM, a software PKCS#11 token, for trying `--signer pkcs11` (the chart's
# signer.type=pkcs11) without an HSM: not for production (see its stage below).
#
# The tag is the `version` of Cargo.toml, which is also the Helm chart's appVersion (the
# chart's default image tag). tests/helm/check_chart.py checks that this file and the chart
# agree (binary path, entrypoint, ports, data directory, user).
#
# For reproducible builds, pin both base images by digest (FROM image:tag@sha256:...).

# The Rust toolchain the project pins (at least Cargo.toml's `rust-version`).
ARG RUST_VERSION=1.95

# ---- build ------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src

# Only what the build reads: the manifest and lockfile, the build script, the proto
# contract it compiles, and the sources. benches/ too: Cargo refuses a manifest whose
# declared bench targets are missing, even for a build that does not compile them.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY benches ./benches
# The workspace members: the shared JOSE crate the server builds on, and the client crate
# (Cargo refuses a workspace whose members are missing).
COPY jose ./jose
COPY client ./client

# The crypto provider: ring by default; `--build-arg FEATURES=aws-lc-rs` for AWS-LC
# (faster RSA; see the README's Performance section).
ARG FEATURES=""

# --locked: build exactly the dependency versions in Cargo.lock, or fail. --package: the
# server only (the workspace also holds the client crate).
# The cache mounts keep the registry and target dir between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package token-authority ${FEATURES:+--features "$FEATURES"} \
    && install -D -m 0755 target/release/token-authority /out/usr/local/bin/token-authority \
    && install -d -m 0700 /out/var/lib/token-authority

# ---- softhsm: for trying --signer pkcs11, not for production -------------------------
# The same binary on Debian (the builder's release, so the same glibc) with SoftHSM. SoftHSM
# is a software token: its "non-extractable" keys are files in the data volume, protected by
# the PIN and the volume's permissions only, so this image shows how the PKCS#11 signer and
# the chart's signer.type=pkcs11 work; production keys belong in an HSM. On the first start
# with TA_SIGNER=pkcs11 the entrypoint initialises the token TA_PKCS11_TOKEN_LABEL with the
# PIN of TA_PKCS11_PIN_FILE (and a random SO PIN that nobody keeps) in the data volume, next
# to the keystore; later starts find it there. Without TA_SIGNER=pkcs11 it runs the server
# as the default image does. The PIN is on softhsm2-util's command line for that one call.
FROM debian:bookworm-slim AS softhsm

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends softhsm2 \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /out/usr/local/bin/token-authority /usr/local/bin/token-authority
COPY --from=build --chown=65532:65532 /out/var/lib/token-authority /var/lib/token-authority

# SoftHSM's configuration: the tokens live in the data volume (the chart's PersistentVolume),
# so they survive restarts together with the keystore that names their keys.
COPY <<'EOF' /etc/softhsm/token-authority.conf
directories.tokendir = /var/lib/token-authority/softhsm-tokens
objectstore.backend = file
log.level = ERROR
EOF

COPY --chmod=0755 <<'EOF' /usr/local/bin/softhsm-entrypoint
#!/bin/sh
# With TA_SIGNER=pkcs11: the SoftHSM token TA_PKCS11_TOKEN_LABEL, initialised on the first
# start with the PIN of TA_PKCS11_PIN_FILE; then the server, as in the default image.
set -eu
umask 077
if [ "${TA_SIGNER:-process}" = pkcs11 ]; then
  label="${TA_PKCS11_TOKEN_LABEL:?TA_SIGNER=pkcs11 needs TA_PKCS11_TOKEN_LABEL}"
  pin_file="${TA_PKCS11_PIN_FILE:?TA_SIGNER=pkcs11 needs TA_PKCS11_PIN_FILE}"
  conf="${SOFTHSM2_CONF:-/etc/softhsm/softhsm2.conf}"
  tokendir="$(sed -n 's/^[[:space:]]*directories\.tokendir[[:space:]]*=[[:space:]]*//p' "$conf")"
  mkdir -p "$tokendir"
  if ! softhsm2-util --show-slots | sed -n 's/^[[:space:]]*Label:[[:space:]]*//p' \
      | sed 's/[[:space:]]*$//' | grep -Fxq -- "$label"; then
    # The server trims the PIN file's line end; so does this.
    pin="$(cat "$pin_file")"
    pin="${pin%"$(printf '\r')"}"
    so_pin="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    softhsm2-util --init-token --free --label "$label" --pin "$pin" --so-pin "$so_pin" >&2
  fi
fi
exec token-authority serve "$@"
EOF

ENV TA_DATA_DIR=/var/lib/token-authority \
    TA_GRPC_LISTEN=0.0.0.0:50051 \
    TA_HTTP_LISTEN=0.0.0.0:8080 \
    SOFTHSM2_CONF=/etc/softhsm/token-authority.conf

USER 65532:65532
WORKDIR /var/lib/token-authority
EXPOSE 50051 8080

ENTRYPOINT ["softhsm-entrypoint"]

# ---- runtime ----------------------------------------------------------------------------
# distroless/cc: glibc and libgcc only, no shell, no package manager; `nonroot` = uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="token-authority" \
      org.opencontainers.image.description="gRPC token authority: mints and verifies JWTs, rotates signing keys, publishes a JWKS" \
      org.opencontainers.image.source="https://github.com/token-authority/token-authority" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /out/usr/local/bin/token-authority /usr/local/bin/token-authority
# The data directory, owned by the runtime user, so that a plain `docker run` works too.
# In Kubernetes the chart mounts a PersistentVolume here.
COPY --from=build --chown=65532:65532 /out/var/lib/token-authority /var/lib/token-authority

# Listen on all interfaces inside the container; keep keys in the data directory.
ENV TA_DATA_DIR=/var/lib/token-authority \
    TA_GRPC_LISTEN=0.0.0.0:50051 \
    TA_HTTP_LISTEN=0.0.0.0:8080

USER 65532:65532
WORKDIR /var/lib/token-authority

# 50051: gRPC (TokenAuthority, grpc.health.v1.Health, reflection).
# 8080: HTTP (/.well-known/jwks.json, /.well-known/openid-configuration, /healthz, /readyz, /metrics).
EXPOSE 50051 8080

ENTRYPOINT ["token-authority", "serve"]
