# One image per Flotilla component, all built from this file:
#   docker build --target contentd -t flotilla/contentd .
# compose.yaml builds each service from its own target.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY . .
RUN make build

FROM debian:bookworm-slim AS base
RUN useradd --system --no-create-home flotilla || true
ENV FLOTILLA_ROOT=/var/lib/flotilla FLOTILLA_STATE=/run/flotilla

FROM base AS gateway
COPY --from=build /src/bin/gateway /src/bin/flotctl /usr/local/bin/
ENTRYPOINT ["gateway"]

FROM base AS contentd
COPY --from=build /src/bin/contentd /usr/local/bin/
ENTRYPOINT ["contentd"]

FROM base AS eventd
COPY --from=build /src/bin/eventd /usr/local/bin/
ENTRYPOINT ["eventd"]

FROM base AS snapshotd
COPY --from=build /src/bin/snapshotd /src/bin/snapshotter-overlayfs /src/bin/snapshotter-native /usr/local/bin/
ENTRYPOINT ["snapshotd"]

FROM base AS taskd
RUN apt-get update && apt-get install -y --no-install-recommends runc && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/bin/taskd /src/bin/taskd-shim /usr/local/bin/
ENTRYPOINT ["taskd"]
