# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain, run as a non-root user on a slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY policies ./policies
RUN cargo build --release --locked --bin kla

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/kla --create-home kla
COPY --from=build /src/target/release/kla /usr/local/bin/kla
COPY --from=build /src/policies /etc/kla/policies
USER kla
WORKDIR /var/lib/kla
EXPOSE 8700
VOLUME ["/var/lib/kla"]
ENTRYPOINT ["kla", "serve"]
CMD ["--data-dir", "/var/lib/kla/data", "--api-addr", "0.0.0.0:8700", "--policies", "/etc/kla/policies"]
