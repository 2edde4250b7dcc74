# syntax=docker/dockerfile:1
#
# The clickheatmap image: every server binary in one distroless image,
#   /usr/local/bin/clickheatmap-operator    the Kubernetes operator (the chart's entrypoint)
#   /usr/local/bin/clickheatmap-aggregator  the aggregator the operator runs as a StatefulSet
#   /usr/local/bin/clickheatmap-collector   the click collector (a pipeline's collector.enabled)
#   /usr/local/bin/clickheatmap-viewer      the heatmap viewer (a pipeline's viewer.enabled)
# running as the non-root user 65532, with no shell and no package manager.
#
#   docker build -t registry.example.com/clickheatmap/clickheatmap:0.1.0 .
#
# Note: the project's CI machine has no Docker engine, so CI never builds this image; it only
# checks this file statically (tests/helm/test_packaging.py). Build and push it from a machine or
# pipeline that has BuildKit.

# ---- build ---------------------------------------------------------------------------------
# The toolchain matches rust-version in Cargo.toml.
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# The whole workspace: Cargo needs every member crate to resolve the workspace, even those it does
# not build. .dockerignore keeps target/, .git, the demo output, docs, charts and the like out; if a
# crate ever include_str!s a file outside the crates, un-ignore that file there.
COPY . .

# Cache mounts keep the registry and the target folder between builds; the binaries are copied
# out of the cache mount so that the next stage can see them. The `dist` profile is release
# without debug info and symbols (Cargo.toml), as scripts/build-image.sh ships them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p clickheatmap-operator -p clickheatmap-aggregator \
      -p clickheatmap-collector -p clickheatmap-viewer \
 && mkdir -p /out \
 && cp target/dist/clickheatmap-operator target/dist/clickheatmap-aggregator \
       target/dist/clickheatmap-collector target/dist/clickheatmap-viewer /out/

# ---- runtime -------------------------------------------------------------------------------
# glibc + libgcc + CA certificates, no shell; Debian 12 like the builder, so glibc matches.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="clickheatmap" \
      org.opencontainers.image.description="clickheatmap operator, aggregator, collector and viewer" \
      org.opencontainers.image.source="https://github.com/clickheatmap/clickheatmap" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder --chown=0:0 --chmod=0755 /out/clickheatmap-operator /usr/local/bin/clickheatmap-operator
COPY --from=builder --chown=0:0 --chmod=0755 /out/clickheatmap-aggregator /usr/local/bin/clickheatmap-aggregator
COPY --from=builder --chown=0:0 --chmod=0755 /out/clickheatmap-collector /usr/local/bin/clickheatmap-collector
COPY --from=builder --chown=0:0 --chmod=0755 /out/clickheatmap-viewer /usr/local/bin/clickheatmap-viewer

USER 65532:65532
# Operator metrics/health port (the aggregator uses 9090).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/clickheatmap-operator"]
