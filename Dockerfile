# Builds the flashgate binary and ships it alone on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin flashgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/flashgate /usr/local/bin/flashgate
USER 65534:65534
ENV FLASHGATE_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["flashgate"]
CMD ["serve"]
