# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain, run on a slim Debian as a non-root user.
#   docker build -t sessiongate .
#   docker run --rm -p 8080:8080 \
#     -v $PWD/config/example.toml:/etc/sessiongate/config.toml:ro \
#     -e SESSIONGATE_JWT_SECRET=... sessiongate
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench ./bench
COPY examples ./examples
COPY vendor ./vendor
RUN cargo build --release --locked --bin sessiongate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sessiongate \
 && mkdir -p /etc/sessiongate
COPY --from=build /src/target/release/sessiongate /usr/local/bin/sessiongate
COPY config/example.toml /etc/sessiongate/config.toml
USER 10001:10001
# Public listener (plain HTTP/1.1 + h2c; terminate TLS in front) and the admin listener.
EXPOSE 8080 9090
# The config lives at /etc/sessiongate/config.toml: mount yours there (read-only).
ENTRYPOINT ["/usr/local/bin/sessiongate"]
CMD ["run", "--config", "/etc/sessiongate/config.toml"]
