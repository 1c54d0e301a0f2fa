# rwkvd: RWKV-7 inference server with per-request state adapters.
#
#   docker build -t rwkvd .
#   docker run --rm -p 8080:8080 -v rwkvd-data:/var/lib/rwkvd \
#       -v "$PWD/deploy/api-keys:/etc/rwkvd/api-keys:ro" rwkvd
#   (deploy/api-keys: 'KEY TENANT' lines, readable by uid 10001, e.g. mode
#   0644; .dockerignore keeps it out of the build context)
#
# The build stage compiles with the same commands as scripts/test.sh (which
# .ci/run calls) and fails the image on a failing unit, golden, matrix (the
# golden checks under each OpenBLAS core type and kernel switch, 1 vs 2, 3
# and 5 threads) or CLI test.
# The runtime stage holds the binary, its shared libraries and the bundled
# demo model; real models and the state store are volumes (a bind-mounted
# data directory must be writable by uid 10001). Every setting is an RWKVD_*
# environment variable (deploy/ENVIRONMENT.md).

# --- build + test ------------------------------------------------------------
FROM debian:12 AS build

# The package list of scripts/deps.sh (clang and libclang-rt-14-dev are for
# the fuzz suite, which this stage does not run; the list stays identical so
# that test-deploy can check it).
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential meson ninja-build pkg-config python3 \
        libopenblas-dev libmicrohttpd-dev libjansson-dev libuv1-dev libcurl4-openssl-dev check \
        curl ca-certificates clang libclang-rt-14-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# -Dnative=false (the default): no -march=native, so the image runs on any
# x86-64; the AVX-512 kernels are still chosen at run time from CPUID.
RUN meson setup build --buildtype=debugoptimized -Dnative=false \
    && ninja -C build \
    && meson test -C build --print-errorlogs --num-processes 2 \
        --suite unit --suite unit-slow --suite golden --suite matrix --suite cli \
    && install -D -m 0755 -s build/server/rwkvd /out/usr/bin/rwkvd \
    && install -D -m 0644 models/demo.safetensors /out/usr/share/rwkvd/demo.safetensors

# --- runtime -----------------------------------------------------------------
FROM debian:12-slim AS runtime

# Runtime libraries only (OpenBLAS, libmicrohttpd, jansson, libuv, libcurl) and curl
# for the health check.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libopenblas0 libmicrohttpd12 libjansson4 libuv1 libcurl4 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --user-group --uid 10001 --home-dir /var/lib/rwkvd \
        --shell /usr/sbin/nologin rwkvd \
    && mkdir -p /var/lib/rwkvd /models /etc/rwkvd \
    && chown rwkvd:rwkvd /var/lib/rwkvd

COPY --from=build /out/ /

# The bundled demo model is the default; mount a real one under /models and
# set RWKVD_MODEL (and RWKVD_VOCAB for World models) to serve it instead.
# A non-loopback address needs API keys: mount a 'KEY TENANT' file at
# /etc/rwkvd/api-keys (or point RWKVD_API_KEYS elsewhere). /health answers
# without a key so that the health check and probes work.
ENV RWKVD_MODEL=/usr/share/rwkvd/demo.safetensors \
    RWKVD_HOST=0.0.0.0 \
    RWKVD_PORT=8080 \
    RWKVD_DATA_DIR=/var/lib/rwkvd \
    RWKVD_API_KEYS=/etc/rwkvd/api-keys \
    RWKVD_HEALTH_PUBLIC=1 \
    RWKVD_DRAIN_TIMEOUT=30

VOLUME ["/var/lib/rwkvd", "/models"]
EXPOSE 8080
USER rwkvd
WORKDIR /var/lib/rwkvd

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${RWKVD_PORT}/health" || exit 1

# SIGTERM starts the drain: in-flight requests get RWKVD_DRAIN_TIMEOUT
# seconds (give `docker stop` a --time longer than that).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/rwkvd"]
CMD ["serve"]
