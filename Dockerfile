# syntax=docker/dockerfile:1.6
#
# Tollgate: one image for every target (auth, quota, router, billing, edge) and the mock upstream.
#
#   docker build -t tollgate:dev .
#   docker run --rm tollgate:dev check-config
#   docker run --rm tollgate:dev serve --target=auth        (see docker-compose.yml, deploy/)
#
# Needs BuildKit (the default since Docker 23) for the ccache cache mount.
# Build arguments: BUILD_JOBS (parallel compile jobs; ~1 GB of RAM each), CMAKE_BUILD_TYPE.

############################ builder ############################
FROM debian:12 AS builder

ARG DEBIAN_FRONTEND=noninteractive
# The Debian 12 packages listed in PLATFORM.md (minus the PostgreSQL server and wrk, which only
# tests and benchmarks use), plus libyaml-cpp-dev, which the top-level CMakeLists.txt requires.
# libgtest-dev/libgmock-dev are needed at configure time: find_package(GTest REQUIRED).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake ninja-build g++ pkg-config ccache \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
      libboost-dev libssl-dev libpqxx-dev prometheus-cpp-dev libyaml-cpp-dev \
      nlohmann-json3-dev libsimdjson-dev libgtest-dev libgmock-dev libbenchmark-dev \
 && rm -rf /var/lib/apt/lists/*

ARG BUILD_JOBS=2
ARG CMAKE_BUILD_TYPE=Release
ENV CCACHE_DIR=/ccache

WORKDIR /src
# .dockerignore keeps the build tree, node_modules, .git and deploy files out of the context.
COPY . .

# Only the two shipped binaries are built (the test executables are configured, not compiled).
RUN --mount=type=cache,target=/ccache \
    cmake -S /src -B /build -G Ninja \
      -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE} \
      -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
 && cmake --build /build -j${BUILD_JOBS} --target tollgate tollgate-mock-upstream \
 && mkdir -p /out \
 && cp /build/cmd/tollgate/tollgate /build/tools/mock_upstream/tollgate-mock-upstream /out/ \
 && strip --strip-unneeded /out/tollgate /out/tollgate-mock-upstream \
 && /out/tollgate check-config

############################ runtime ############################
FROM debian:12-slim AS runtime

ARG DEBIAN_FRONTEND=noninteractive
# Exactly the shared libraries the binaries link (checked with ldd + dpkg -S on Debian 12);
# their own dependencies (libpq5's Kerberos/LDAP, c-ares, re2, zlib, civetweb...) come with them.
# ca-certificates: the edge calls real providers over TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates \
      libgrpc++1.51 libgrpc29 libabsl20220623 libprotobuf32 \
      libpqxx-6.4 libpq5 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 \
      libyaml-cpp0.7 libssl3 libsimdjson14 \
 && rm -rf /var/lib/apt/lists/*

# A fixed, non-root uid/gid so Kubernetes' runAsNonRoot can verify it and volumes can be chowned.
RUN groupadd --system --gid 10001 tollgate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tollgate --no-create-home \
      --shell /usr/sbin/nologin tollgate \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/tollgate \
 && install -d -m 0755 /etc/tollgate

COPY --from=builder /out/tollgate /out/tollgate-mock-upstream /usr/local/bin/

# Fails the build if a runtime library is missing.
RUN tollgate check-config && tollgate-mock-upstream --help >/dev/null

USER 10001:10001
WORKDIR /var/lib/tollgate

# HTTP API (edge) · gRPC auth, quota, router, billing · Prometheus /metrics · mock upstream.
# Every listener defaults to 127.0.0.1: in a container set the *_LISTEN variables to 0.0.0.0
# (docker-compose.yml and the Helm chart do).
EXPOSE 8080 7101 7102 7103 7104 9464 9000

# SIGTERM drains for shutdown.drain_timeout, then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tollgate"]
CMD ["serve", "--target=all"]
