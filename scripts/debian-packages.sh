#!/usr/bin/env bash
# Installs the Debian packages the tests run for real (PostgreSQL, etcd, dnsmasq as the DNS
# server of the DNS discovery test, Chromium for the UI's end-to-end tests, Node.js and npm
# to build the UI, curl for the API checks) when they are
# missing: with apt-get as root, else it names the command to run and fails.
set -euo pipefail
need=()
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || need+=(postgresql)
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || need+=(etcd-server)
[ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
command -v curl >/dev/null 2>&1 || need+=(curl)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
else
  echo "The tests need these Debian packages: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
