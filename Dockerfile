# The irsa-secrets sidecar image: one static binary in an empty image, running as a non-root
# user.
#
#   docker build -t irsa-secrets .                    # full build: needs the rust image
#   scripts/build-static && \
#     docker build --target local -t irsa-secrets .   # from a locally built static binary:
#                                                     # no base image to pull, works offline
#
# No `# syntax=` line on purpose: the built-in frontend of Docker 20.10 and later builds this
# file, so no frontend image is pulled either.

ARG RUST_IMAGE=rust:1.95-bookworm

# --- builder: a static musl binary (musl's resolver and user lookups need no NSS at run time)
FROM ${RUST_IMAGE} AS builder
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      protobuf-compiler musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked --target "$target" --bin irsa-secrets \
 && cp "target/$target/release/irsa-secrets" /irsa-secrets

# --- runtime: what every final image shares
FROM scratch AS runtime
ARG VERSION=0.1.0
# The repository's URL; the project has no public home yet, so pass it when publishing, e.g.
# --build-arg SOURCE=$GITHUB_SERVER_URL/$GITHUB_REPOSITORY.
ARG SOURCE=
LABEL org.opencontainers.image.title="irsa-secrets" \
      org.opencontainers.image.description="Gives BuildKit builds the runner's AWS identity (IRSA) as session secrets, without static keys" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
# The socket lives on a volume shared with the build client (an emptyDir in Kubernetes).
# `proxy --config FILE` ignores it (the file's [[listener]] tables name their sockets); only a
# --listen on the command line conflicts with --config.
ENV IRSA_SECRETS_LISTEN=unix:///run/irsa/helper.sock
# 65532 is distroless's "nonroot"; the image has no /etc/passwd, so the user is numeric.
USER 65532:65532
# `health` connects to the socket above; the image has no shell, so the binary checks itself.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/irsa-secrets", "health"]
ENTRYPOINT ["/irsa-secrets"]
CMD ["proxy"]

# --- local: a binary built on this machine by scripts/build-static (or any static build)
FROM runtime AS local
ARG LOCAL_BINARY=target/x86_64-unknown-linux-gnu/release/irsa-secrets
COPY ${LOCAL_BINARY} /irsa-secrets

# --- release (the default target): the builder's binary
FROM runtime AS release
COPY --from=builder /irsa-secrets /irsa-secrets
