#!/usr/bin/env bash
# Make sure a Docker engine answers; start one (no bridge, no iptables) if none does.
# `make demo` runs this: the demo's container task needs an engine. It is left running.
set -euo pipefail
if docker info >/dev/null 2>&1 || python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect("/var/run/docker.sock")' 2>/dev/null; then
    echo "docker engine: running"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "No Docker engine answers and only root can start one: start dockerd, or run as root." >&2
    exit 1
fi
log=/tmp/buildbot-farm-dockerd.log
nohup dockerd --bridge=none --iptables=false --ip6tables=false >"$log" 2>&1 &
for _ in $(seq 1 60); do
    if [ -S /var/run/docker.sock ] && python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.connect("/var/run/docker.sock")' 2>/dev/null; then
        echo "docker engine: started (log in $log)"
        exit 0
    fi
    sleep 0.5
done
echo "dockerd did not start; its log ($log) ends with:" >&2
tail -n 20 "$log" >&2
exit 1
