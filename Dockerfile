# syntax=docker/dockerfile:1
# Builds the flashgate binary and ships it alone on a slim Debian. The cargo registry and the
# target folder are BuildKit cache mounts: a source change rebuilds flashgate, not every
# dependency.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin flashgate \
    && cp target/release/flashgate /usr/local/bin/flashgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/flashgate /usr/local/bin/flashgate
USER 65534:65534
ENV FLASHGATE_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["flashgate"]
CMD ["serve"]
