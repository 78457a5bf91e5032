#!/usr/bin/env bash
# Install the Debian packages the real-service tests need, and only those that are missing:
# docker.io (dockerd), a PostgreSQL server, debootstrap (builds the base image),
# busybox-static (the tiny image), zstd and bubblewrap (the process buildlets' sandbox). Safe to run again: it does nothing when all is there.
# With --bench (`make bench`), also what only the benchmarks use: wrk, the HTTP load generator.
set -euo pipefail

missing=()
if ! command -v dockerd >/dev/null 2>&1 && [ ! -x /usr/sbin/dockerd ]; then
    missing+=(docker.io)
fi
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    missing+=(postgresql-15)
fi
if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
    missing+=(debootstrap)
fi
# The plain `busybox` package also ships /bin/busybox, but linked dynamically: the image built
# from it could not run, so ask for busybox-static by name.
if [ "$(dpkg-query -W -f='${db:Status-Status}' busybox-static 2>/dev/null)" != installed ]; then
    missing+=(busybox-static)
fi
if ! command -v zstd >/dev/null 2>&1; then
    missing+=(zstd)
fi
if ! command -v bwrap >/dev/null 2>&1; then
    missing+=(bubblewrap)
fi
# The artifact repository's tests: real nginx with WebDAV, and real WebDAV/HTTP clients.
for tool in nginx:nginx-light litmus:litmus rclone:rclone curl:curl; do
    if ! command -v "${tool%%:*}" >/dev/null 2>&1 && [ ! -x "/usr/sbin/${tool%%:*}" ]; then
        missing+=("${tool#*:}")
    fi
done
# The Docker test hosts (tests/hosts): network namespaces (ip), nsenter, openssl and iptables
# (a host whose agents' ports are blocked).
for tool in ip:iproute2 nsenter:util-linux openssl:openssl iptables:iptables; do
    if ! command -v "${tool%%:*}" >/dev/null 2>&1 && [ ! -x "/usr/sbin/${tool%%:*}" ] \
        && [ ! -x "/usr/bin/${tool%%:*}" ]; then
        missing+=("${tool#*:}")
    fi
done
if [ ! -e /usr/lib/nginx/modules/ngx_http_dav_ext_module.so ]; then
    missing+=(libnginx-mod-http-dav-ext)
fi
# The web UI tests: Debian's headless chromium and its chromedriver (never a downloaded one).
for tool in chromium:chromium chromedriver:chromium-driver; do
    if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
        missing+=("${tool#*:}")
    fi
done
bench_tools=""
if [ "${1:-}" = "--bench" ]; then
    bench_tools=", wrk"
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
fi

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-system-packages: docker.io, postgresql, debootstrap, busybox-static, zstd," \
        "bubblewrap, iproute2, nsenter, openssl, iptables," \
        "nginx (dav-ext), litmus, rclone, curl, chromium, chromedriver${bench_tools} all present"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-packages: missing ${missing[*]}; installing them needs root:" \
        "run \`sudo $0\` (or install those Debian packages yourself)" >&2
    exit 1
fi

echo "install-system-packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get -q update
apt-get -q install -y --no-install-recommends "${missing[@]}"
