# token-authority container image.
#
#   docker build -t ghcr.io/token-authority/token-authority:0.1.0 .
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
