# syntax=docker/dockerfile:1
#
# smarthost container image.
#   docker build -t smarthost .
#   docker run -d --name smarthost -v smarthost-data:/var/lib/smarthost smarthost
#
# The image listens on port 25 as the non-root user `smarthost`, keeps everything it writes
# (spool, Maildir outbox, DKIM keys) under the volume /var/lib/smarthost, and is configured
# with SMARTHOST__SECTION__KEY environment variables or a file named by SMARTHOST_CONFIG
# (see docs/configuration.md).

# ---- build ----
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin smarthost \
    && install -D -s -m 0755 target/release/smarthost /out/smarthost

# ---- runtime ----
FROM debian:bookworm-slim

# Upstream certificates are verified against the root set built into the binary
# (webpki-roots, plus ca_file), so no ca-certificates package is needed.
# libcap2-bin is only needed for setcap, which lets the non-root binary bind port 25.
COPY --from=build /out/smarthost /usr/local/bin/smarthost
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin \
    && setcap cap_net_bind_service=+ep /usr/local/bin/smarthost \
    && apt-get purge -y --auto-remove libcap2-bin \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system smarthost \
    && useradd --system --gid smarthost --home-dir /var/lib/smarthost --shell /usr/sbin/nologin smarthost \
    && install -d -o smarthost -g smarthost -m 0750 /var/lib/smarthost

# Relative paths of the configuration (data/spool, data/outbox, data/dkim) resolve here,
# inside the volume, so mail and keys survive a rebuild of the container.
WORKDIR /var/lib/smarthost
VOLUME ["/var/lib/smarthost"]

ENV SMARTHOST__SERVER__LISTEN=0.0.0.0:25
EXPOSE 25

USER smarthost
STOPSIGNAL SIGTERM

# Alive = the SMTP port answers with a banner (220, or 554 when 127.0.0.1 has been left
# out of trusted_networks). Needs nothing beyond bash; does not touch the upstreams.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/25 && head -c3 <&3 | grep -qx -e 220 -e 554"]

ENTRYPOINT ["smarthost"]
CMD ["serve"]
