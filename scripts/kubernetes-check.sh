#!/usr/bin/env bash
# Checks ops/kubernetes offline: every manifest against the Kubernetes API schemas bundled in
# kubernetes-validate (strict: an unknown field fails), for the oldest and newest versions we
# support, then that the pieces fit together (scripts/kubernetes_fit.py). Installs
# kubernetes-validate into a private venv (target/kubernetes-venv) the first time; nothing is
# fetched at check time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-venv.sh
venv=target/kubernetes-venv
flashgate_venv "$venv" "kubernetes-validate==1.37.0" kubernetes-validate
# The Prometheus Operator's ServiceMonitor and kustomize's Kustomization have no bundled schema:
# kubernetes_fit.py checks what they refer to instead.
manifests=$(ls ops/kubernetes/*.yaml | grep -vE '/(kustomization|servicemonitor)\.yaml$')
for version in 1.29.0 1.37.0; do
  # shellcheck disable=SC2086
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" $manifests
done
"$venv/bin/python" scripts/kubernetes_fit.py ops/kubernetes
echo "ops/kubernetes: valid for Kubernetes 1.29 and 1.37, and consistent"
