# One image with every binary of the workspace (gateway, notification-writer, rule-evaluator,
# dispatcher, media-saga, esctl) and the web app; each Deployment / compose service runs its
# own binary as the command (`gateway` by default):
#   docker build -t event-substrate:0.1.0 .
#   docker run event-substrate:0.1.0 media-saga

# The web app (web/dist), served by the gateway when gateway.web.root=/app/web.
FROM node:22-bookworm-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build

FROM rust:1.95-bookworm AS build
# librdkafka's cmake build: curl (OIDC) and OpenSSL (TLS and SASL/SCRAM to the brokers).
RUN apt-get update && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
      -p gateway -p notification-writer -p rule-evaluator -p dispatcher -p media-saga -p esctl \
    && for bin in gateway notification-writer rule-evaluator dispatcher media-saga esctl; do \
         cp "target/release/$bin" /usr/local/bin/; \
       done

FROM debian:bookworm-slim
# curl: the chart's `helm test` pod calls the gateway's /healthz with it.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libcurl4 libssl3 curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 substrate \
    && useradd --system --uid 10001 --gid 10001 substrate
COPY --from=build /usr/local/bin/gateway /usr/local/bin/notification-writer \
     /usr/local/bin/rule-evaluator /usr/local/bin/dispatcher /usr/local/bin/media-saga \
     /usr/local/bin/esctl /usr/local/bin/
COPY --from=web /web/dist /app/web
COPY avro /app/avro
COPY supabase/migrations /app/supabase/migrations
COPY topics.yaml routes.yaml /app/
WORKDIR /app
USER 10001:10001
CMD ["gateway"]
