# One image per service: docker build --build-arg SERVICE=gateway .
# SERVICE is a binary of the workspace: gateway, notification-writer, rule-evaluator, dispatcher, media-saga
# or esctl.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG SERVICE
RUN cargo build --release --locked -p "${SERVICE}" \
    && cp "target/release/${SERVICE}" /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libcurl4 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 substrate
ARG SERVICE
COPY --from=build /usr/local/bin/${SERVICE} /usr/local/bin/${SERVICE}
RUN ln -s "/usr/local/bin/${SERVICE}" /usr/local/bin/service
COPY avro /app/avro
COPY supabase/migrations /app/supabase/migrations
COPY topics.yaml routes.yaml /app/
WORKDIR /app
USER substrate
CMD ["service"]
