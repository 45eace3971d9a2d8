"""Deployment and operations files (issue 14), checked offline and against a
live gateway:

- deploy/kubernetes/: the kustomization rendered here (kubectl is not needed:
  its resources, namespace and images are applied by this file); every object
  parses; probes, ports and NetworkPolicies match the variables; the
  termination grace covers GATEWAY_DRAIN_DELAY + GATEWAY_SHUTDOWN_TIMEOUT; no
  secret in the ConfigMap; the ConfigMap's settings start a real gateway and
  the DaemonSet's arguments a real agent.
- deploy/systemd/: `systemd-analyze verify` (with ExecStart pointed at the
  built binary, since verify checks that it is executable), memory guardrails,
  stop timeout.
- deploy/prometheus/: `promtool check rules` and `promtool test rules`; every
  alert has a runbook_url to an existing docs/runbooks/ page and a firing test.
- deploy/grafana/: the dashboard parses, its PromQL parses (promtool), and it
  uses only metrics a live `wsgate serve` and `wsgate probe` export.
- Every metric name in the rules, the dashboard and the HPA is exported by the
  binary (live scrape) or listed in deploy/prometheus/metrics.yml (planned or
  external); a planned name that the binary exports fails the test.
- GATEWAY_SERVICE_NAME sets the `service` field of every log line.
"""

import configparser
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import yaml

import gw
import wsraw
from test_probe import Probe

ROOT = gw.ROOT
DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "kubernetes")
SYSTEMD = os.path.join(DEPLOY, "systemd")
PROM = os.path.join(DEPLOY, "prometheus")
DASHBOARD = os.path.join(DEPLOY, "grafana", "wsgate-dashboard.json")
RUNBOOKS = os.path.join(ROOT, "docs", "runbooks")
RUNBOOK_BASE = "https://git.example.com/wsgate/blob/main/docs/runbooks/"
RULE_FILES = ["wsgate-alerts.yml", "wsgate-probe-alerts.yml"]

# The alerts issue 14 asks for, by their rule names.
REQUIRED_ALERTS = {
    "WsgateDown",                      # gateway down
    "WsgateReadinessFlapping",         # readiness flapping
    "WsgateHandshakeFailures",         # WebSocket handshake failures
    "WsgateRelayChurn",                # relay churn (short-lived connections)
    "WsgateTerminalTokenReplaySpike",  # terminal token replay spikes
    "WsgateTerminalRefusals",          # terminal refusals
    "WsgateNotificationWriteErrors",   # notification write errors
    "WsgatePushOverflows",             # push overflows
    "WsgateBackendUnhealthy",          # backend unhealthy
    "WsgateProbeLegDown",              # probe leg down
    "WsgateProbeDropBurst",            # probe drop burst
}
SECRET_VARS = {"GATEWAY_ADMIN_TOKEN", "GATEWAY_REDIS_PASSWORD", "GATEWAY_AGENT_SECRET"}
SECRETISH = re.compile(r"(TOKEN|PASSWORD|SECRET|PRIVATE_KEY|_KEY)$|\.pem$|\.key$", re.I)
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")


def seconds(v):
    """A wsgate duration ("15s", "250ms", "1m", bare seconds) in seconds."""
    v = str(v).strip()
    if re.fullmatch(r"\d+", v):
        return float(v)
    m = DURATION.match(v)
    assert m, f"cannot parse duration {v!r}"
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def port_of(addr):
    m = re.search(r":(\d+)$", addr)
    assert m, f"no port in {addr!r}"
    return int(m.group(1))


# --------------------------------------------------------------- kustomize

NON_NAMESPACED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                  "CustomResourceDefinition", "PriorityClass"}


def render_kustomization(path=K8S):
    """What `kustomize build` produces for the features this kustomization
    uses (resources, secretGenerator without name hashes, namespace, images);
    anything else is refused so that a new feature gets its rendering here
    too. The generator's git-ignored inputs (secrets/secrets.env, signer.pem)
    are read from secrets.env.example and as empty when absent."""
    with open(os.path.join(path, "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    unsupported = set(k) - {"apiVersion", "kind", "namespace", "resources", "images", "secretGenerator",
                            "generatorOptions"}
    assert not unsupported, f"render_kustomization does not implement {unsupported}"
    opts = k.get("generatorOptions", {})
    assert opts.get("disableNameSuffixHash") is True, "name hashes are not rendered here"
    images = {i["name"]: i for i in k.get("images", [])}
    docs = []
    for res in k["resources"]:
        with open(os.path.join(path, res)) as f:
            docs += [(res, d) for d in yaml.safe_load_all(f) if d is not None]
    for g in k.get("secretGenerator", []):
        assert set(g) <= {"name", "type", "envs", "files"}, g
        data = {}
        for e in g.get("envs", []):
            real = os.path.join(path, e)
            data.update(env_file(real if os.path.exists(real) else real + ".example"))
        for spec in g.get("files", []):
            key, _, rel = spec.rpartition("=")
            real = os.path.join(path, rel)
            data[key or os.path.basename(rel)] = open(real).read() if os.path.exists(real) else ""
        docs.append(("secretGenerator", {"apiVersion": "v1", "kind": "Secret", "type": g.get("type", "Opaque"),
                                         "metadata": {"name": g["name"], "labels": dict(opts.get("labels", {}))},
                                         "stringData": data}))
    objs = []
    for res, doc in docs:
        doc["_file"] = res
        if k.get("namespace") and doc["kind"] not in NON_NAMESPACED:
            doc["metadata"]["namespace"] = k["namespace"]
        for c in pod_spec(doc).get("containers", []) + pod_spec(doc).get("initContainers", []):
            name, _, tag = c["image"].partition(":")
            if name in images:
                i = images[name]
                c["image"] = f'{i.get("newName", name)}:{i.get("newTag", tag or "latest")}'
        objs.append(doc)
    return k, objs


def pod_spec(obj):
    if obj.get("kind") in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return {}


def pod_labels(obj):
    return obj["spec"]["template"]["metadata"]["labels"]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and \
        not selector.get("matchExpressions")


@pytest.fixture(scope="module")
def k8s():
    k, objs = render_kustomization()
    by = {}
    for o in objs:
        key = (o["kind"], o["metadata"]["name"])
        assert key not in by, f"duplicate object {key}"
        by[key] = o
    return k, objs, by


def gateway_container(by):
    return one_container(by[("Deployment", "wsgate")], "wsgate")


def one_container(obj, name):
    cs = [c for c in pod_spec(obj)["containers"] if c["name"] == name]
    assert len(cs) == 1, f"{obj['metadata']['name']}: container {name}"
    return cs[0]


def config(by):
    return by[("ConfigMap", "wsgate-config")]["data"]


def named_port(container, name):
    ps = [p for p in container.get("ports", []) if p["name"] == name]
    assert len(ps) == 1, f"port {name} of {container['name']}"
    return ps[0]["containerPort"]


def probe_port(container, probe):
    p = container[probe]
    h = p.get("httpGet") or p.get("tcpSocket")
    port = h["port"]
    return named_port(container, port) if isinstance(port, str) else port


def test_kustomization_renders_every_object(k8s):
    k, objs, by = k8s
    # Every YAML file of the folder is composed (none forgotten), every object is complete.
    files = {f for f in os.listdir(K8S) if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml"}
    assert files == set(k["resources"]), f"files not in the kustomization: {files - set(k['resources'])}"
    for o in objs:
        assert o.get("apiVersion") and o.get("kind") and o["metadata"].get("name"), o
        if o["kind"] not in NON_NAMESPACED:
            assert o["metadata"]["namespace"] == "wsgate"
        for c in pod_spec(o).get("containers", []):
            assert c["image"] in ("registry.example.com/wsgate:latest", "redis:7.2-alpine"), c["image"]
    kinds = {kind for kind, _ in by}
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
            "HorizontalPodAutoscaler", "NetworkPolicy", "DaemonSet"} <= kinds
    for key in [("Deployment", "wsgate"), ("Deployment", "wsgate-redis"), ("DaemonSet", "wsgate-agent"),
                ("Service", "wsgate"), ("Service", "wsgate-admin"), ("Service", "wsgate-redis"),
                ("PodDisruptionBudget", "wsgate"), ("HorizontalPodAutoscaler", "wsgate"),
                ("NetworkPolicy", "wsgate-gateway"), ("NetworkPolicy", "wsgate-redis"),
                ("NetworkPolicy", "wsgate-agent"), ("Secret", "wsgate-secrets"), ("ConfigMap", "wsgate-config")]:
        assert key in by, f"missing {key}"
    # Workload selectors match their own pod templates.
    for o in objs:
        if pod_spec(o):
            assert selects(o["spec"]["selector"], pod_labels(o)), o["metadata"]["name"]


def test_probes_and_ports_match_the_variables(k8s):
    _, _, by = k8s
    cfg = config(by)
    c = gateway_container(by)
    assert c["args"] == ["serve"]
    assert {"configMapRef": {"name": "wsgate-config"}} in c["envFrom"]
    public = named_port(c, "http")
    assert public == port_of(cfg["GATEWAY_PUBLIC_HTTP_ADDR"]) == 8080
    assert named_port(c, "admin") == port_of(cfg["GATEWAY_ADMIN_HTTP_ADDR"]) == 8081
    assert named_port(c, "grpc") == port_of(cfg["GATEWAY_AUTHENTICATED_GRPC_ADDR"]) == 9090
    # Readiness on /readyz and liveness on /healthz, both answered on the public listener.
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probe_port(c, "readinessProbe") == public and probe_port(c, "livenessProbe") == public
    # The routes file and signer key paths are where the volumes mount them.
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert cfg["GATEWAY_ROUTES_FILE"] == mounts["routes"] + "/routes.json"
    assert cfg["GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH"] == mounts["signer"] + "/signer.pem"
    # Services point at named ports that exist, on pods they select.
    gw_labels = pod_labels(by[("Deployment", "wsgate")])
    for name in ("wsgate", "wsgate-admin"):
        s = by[("Service", name)]
        assert selects({"matchLabels": s["spec"]["selector"]}, gw_labels)
        for p in s["spec"]["ports"]:
            named_port(c, p["targetPort"])
    assert {p["targetPort"] for p in by[("Service", "wsgate")]["spec"]["ports"]} == {"http", "grpc"}
    assert {p["targetPort"] for p in by[("Service", "wsgate-admin")]["spec"]["ports"]} == {"admin"}
    # Redis: the gateway's address is the Redis Service and its port.
    host, port = cfg["GATEWAY_REDIS_MASTER_ADDR"].rsplit(":", 1)
    rs = by[("Service", host)]
    rc = one_container(by[("Deployment", "wsgate-redis")], "redis")
    assert named_port(rc, rs["spec"]["ports"][0]["targetPort"]) == int(port) == rs["spec"]["ports"][0]["port"]
    assert selects({"matchLabels": rs["spec"]["selector"]}, pod_labels(by[("Deployment", "wsgate-redis")]))
    # Agent: listens where its container port and probes say.
    ac = one_container(by[("DaemonSet", "wsgate-agent")], "agent")
    listen = ac["args"][ac["args"].index("--listen") + 1]
    assert port_of(listen) == named_port(ac, "agent") == 7681
    assert ac["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert probe_port(ac, "readinessProbe") == probe_port(ac, "livenessProbe") == 7681
    # The terminal route lets tokens name agents on that port.
    routes = yaml.safe_load(cfg["routes.json"])["routes"]
    term = [r for r in routes if r["kind"] == "terminal"]
    assert term and all(u.endswith(":7681") for u in term[0]["agent_upstreams"])
    # PDB and HPA target the gateway.
    assert selects(by[("PodDisruptionBudget", "wsgate")]["spec"]["selector"], gw_labels)
    hpa = by[("HorizontalPodAutoscaler", "wsgate")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "wsgate"}
    assert [m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"] == ["ws_connections"]
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]


def test_grace_period_covers_the_drain(k8s):
    _, _, by = k8s
    cfg = config(by)
    dep = by[("Deployment", "wsgate")]
    c = gateway_container(by)
    drain = seconds(cfg["GATEWAY_DRAIN_DELAY"])
    budget = seconds(cfg["GATEWAY_SHUTDOWN_TIMEOUT"])
    grace = pod_spec(dep)["terminationGracePeriodSeconds"]
    assert grace > drain + budget, f"grace {grace}s must exceed drain {drain}s + shutdown {budget}s"
    # The drain delay outlasts the readiness probe's failure window, so the
    # endpoint is removed while the listeners still serve.
    rp = c["readinessProbe"]
    window = rp["periodSeconds"] * rp["failureThreshold"] + rp["timeoutSeconds"]
    assert drain > window, f"GATEWAY_DRAIN_DELAY {drain}s within the readiness failure window {window}s"
    # The gateway refuses a drain delay of more than half its shutdown budget.
    assert drain <= budget / 2
    # A rollout never drops below the current capacity and one pod drains at a time.
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert by[("PodDisruptionBudget", "wsgate")]["spec"]["maxUnavailable"] == 1


def test_no_secret_in_the_configmap(k8s):
    _, objs, by = k8s
    for o in objs:
        if o["kind"] != "ConfigMap":
            continue
        for key, value in o["data"].items():
            assert not SECRETISH.search(key), f"ConfigMap {o['metadata']['name']} holds secret-like key {key}"
            assert "-----BEGIN" not in value, f"ConfigMap key {key} holds a PEM block"
            assert not any(v in value for v in SECRET_VARS), f"ConfigMap key {key} names a secret"
    # No secret value is committed: the Secret is generated from git-ignored
    # files, whose committed example has every key and no value.
    for o in objs:
        if o["kind"] == "Secret":
            assert o["_file"] == "secretGenerator", f"{o['_file']}: a Secret manifest in the repository"
    sec = by[("Secret", "wsgate-secrets")]
    assert set(sec["stringData"]) == SECRET_VARS | {"signer.pem"}
    example = env_file(os.path.join(K8S, "secrets", "secrets.env.example"))
    assert set(example) == SECRET_VARS and all(v == "" for v in example.values()), "a secret value is committed"
    with open(os.path.join(K8S, "secrets", ".gitignore")) as f:
        assert set(f.read().split()) >= {"secrets.env", "signer.pem"}
    tracked = subprocess.run(["git", "ls-files", os.path.join(K8S, "secrets")], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    assert not [t for t in tracked if t.endswith(("secrets.env", "signer.pem"))], tracked
    for o in objs:
        for c in pod_spec(o).get("containers", []):
            for e in c.get("env", []):
                if e["name"] in SECRET_VARS or SECRETISH.search(e["name"]):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    assert ref and ref["name"] == "wsgate-secrets", f"{c['name']}: {e['name']} not from the Secret"
                    assert "value" not in e
    # The gateway gets all three secrets, the agent only its own.
    gw_env = {e["name"] for e in gateway_container(by)["env"]}
    assert SECRET_VARS <= gw_env
    ag_env = {e["name"] for e in one_container(by[("DaemonSet", "wsgate-agent")], "agent")["env"]}
    assert ag_env & SECRET_VARS == {"GATEWAY_AGENT_SECRET"}


def test_network_policies_cover_public_admin_grpc_and_redis(k8s):
    _, _, by = k8s
    gw_labels = pod_labels(by[("Deployment", "wsgate")])
    c = gateway_container(by)

    def rules_for(policy, port):
        return [r for r in policy["spec"]["ingress"] if any(p["port"] == port for p in r.get("ports", []))]

    pol = by[("NetworkPolicy", "wsgate-gateway")]
    assert selects(pol["spec"]["podSelector"], gw_labels) and pol["spec"]["policyTypes"] == ["Ingress"]
    # Every container port is covered (nothing silently blocked).
    for p in c["ports"]:
        assert rules_for(pol, p["containerPort"]), f"no ingress rule for {p['name']}"
    # Public: open to all. gRPC and admin: only from the listed peers.
    assert all("from" not in r for r in rules_for(pol, 8080))
    for port in (9090, 8081):
        for r in rules_for(pol, port):
            assert r.get("from"), f"port {port} open to everyone"
            for peer in r["from"]:
                assert peer.get("podSelector", {}).get("matchLabels") or \
                    peer.get("namespaceSelector", {}).get("matchLabels"), f"port {port}: unrestricted peer {peer}"
    # Redis and agents: only the gateways, only their port.
    for name, workload, port in (("wsgate-redis", ("Deployment", "wsgate-redis"), 6379),
                                 ("wsgate-agent", ("DaemonSet", "wsgate-agent"), 7681)):
        p = by[("NetworkPolicy", name)]
        assert selects(p["spec"]["podSelector"], pod_labels(by[workload]))
        assert not selects(p["spec"]["podSelector"], gw_labels)
        for r in p["spec"]["ingress"]:
            assert [x["port"] for x in r["ports"]] == [port]
            assert r["from"] and all(set(x) == {"podSelector"} and selects(x["podSelector"], gw_labels)
                                     for x in r["from"]), f"{name}: a peer other than the gateways"


# Variables that deployment files set but the binary cannot use here:
# listeners (moved to loopback ports by gw.Gateway), and the features not
# built yet (Redis, gRPC and its signer key), which a start would otherwise
# try to reach or load.
LEFT_OUT = {"GATEWAY_PUBLIC_HTTP_ADDR", "GATEWAY_ADMIN_HTTP_ADDR", "GATEWAY_AUTHENTICATED_GRPC_ADDR",
            "GATEWAY_REDIS_MASTER_ADDR", "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH"}


def check_settings_start_a_gateway(settings, make_gateway, routes_json=None):
    """Every GATEWAY_* key of a deployment's settings is a variable `wsgate
    --help` documents, and a gateway started with them becomes ready, logs
    with the configured service name, and exits 0 after SIGTERM within
    GATEWAY_SHUTDOWN_TIMEOUT (plus slack)."""
    helptext = gw.run_cli(["--help"]).stdout.decode()
    for key in settings:
        if key.startswith("GATEWAY_"):
            assert re.search(rf"\b{key}\b", helptext), f"{key} is not a wsgate variable"
    d = tempfile.mkdtemp(prefix="wsgate-deploy-")
    try:
        env = {k: v for k, v in settings.items() if k.startswith("GATEWAY_") and k not in LEFT_OUT}
        if routes_json is not None:
            env["GATEWAY_ROUTES_FILE"] = os.path.join(d, "routes.json")
            with open(env["GATEWAY_ROUTES_FILE"], "w") as f:
                f.write(routes_json)
        else:
            env.pop("GATEWAY_ROUTES_FILE", None)
        g = make_gateway(env=env)
        assert g.get("/healthz").status == 200
        assert g.admin_get("/metrics").status == 200
        logs = g.logs()
        assert logs and all(l["service"] == settings.get("GATEWAY_SERVICE_NAME", "wsgate") for l in logs)
        budget = seconds(settings.get("GATEWAY_SHUTDOWN_TIMEOUT", "30s"))
        g.signal(signal.SIGTERM)
        if seconds(settings.get("GATEWAY_DRAIN_DELAY", "5s")) > 0:
            # The drain delay: /readyz says 503 while the listeners still serve;
            # a second SIGTERM cuts the delay short (keeps the test fast).
            deadline = time.monotonic() + 10
            while g.get("/readyz").status != 503:
                assert time.monotonic() < deadline, "/readyz never answered 503 during the drain delay"
                time.sleep(0.05)
            assert g.get("/healthz").status == 200
            g.signal(signal.SIGTERM)
        assert g.wait(budget + 10) == 0, g.stderr()[-3000:]
    finally:
        shutil.rmtree(d)


def test_configmap_settings_start_a_real_gateway(k8s, make_gateway):
    cfg = config(k8s[2])
    check_settings_start_a_gateway(cfg, make_gateway, routes_json=cfg["routes.json"])


def test_systemd_environment_starts_a_real_gateway(make_gateway):
    env = env_file(os.path.join(SYSTEMD, "wsgate.env.example"))
    # The example's admin listener is loopback, so an empty admin token is allowed.
    assert env["GATEWAY_ADMIN_HTTP_ADDR"].startswith("127.0.0.1:") and env["GATEWAY_ADMIN_TOKEN"] == ""
    check_settings_start_a_gateway(env, make_gateway)


def run_agent(args, secret):
    """Starts `wsgate agent ARGS` with the secret; returns (proc, port, stderr file)."""
    port = gw.free_port()
    args = list(args)
    i = args.index("--listen")
    args[i + 1] = f"127.0.0.1:{port}"
    env = gw.base_env()
    env["GATEWAY_AGENT_SECRET"] = secret
    err = tempfile.TemporaryFile(prefix="wsgate-agent-")
    proc = subprocess.Popen([gw.wsgate_bin()] + args, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=err)

    def up():
        assert proc.poll() is None, "agent exited"
        try:
            return wsraw.http_request(port, "GET", "/healthz", timeout=1.0).status == 200
        except (OSError, wsraw.Timeout, wsraw.Closed):
            return False
    try:
        gw.wait_until(up, timeout=10, what="agent /healthz")
    except AssertionError:
        proc.kill()
        proc.wait(timeout=10)
        err.seek(0)
        raise AssertionError(err.read().decode("utf-8", "replace"))
    return proc, err


def stop_agent(proc, err):
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    err.seek(0)
    text = err.read().decode("utf-8", "replace")
    err.close()
    assert not [l for l in text.splitlines() if any(p in l for p in gw.SANITIZER_PATTERNS)], text[-6000:]
    assert rc == 0, f"agent exited {rc}:\n{text[-3000:]}"


def test_daemonset_arguments_start_a_real_agent(k8s):
    _, _, by = k8s
    ac = one_container(by[("DaemonSet", "wsgate-agent")], "agent")
    assert ac["args"][0] == "agent"
    stop_agent(*run_agent(ac["args"], "deploy-test-secret"))


# ----------------------------------------------------------------- systemd

def unit(path):
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str
    with open(path) as f:
        cp.read_string(f.read())
    return cp


def env_file(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k, _, v = line.partition("=")
                out[k] = v
    return out


def size_bytes(v):
    m = re.fullmatch(r"(\d+)([KMGT]?)", v)
    assert m, v
    return int(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")


def test_systemd_units_verify():
    """`systemd-analyze verify` on both units; it checks that ExecStart is
    executable, so the copies run the built binary. Any message fails (verify
    exits 0 on unknown keys and only prints a warning)."""
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze missing (make deps installs systemd)"
    d = tempfile.mkdtemp(prefix="wsgate-units-")
    try:
        names = ["wsgate.service", "wsgate-agent.service"]
        for n in names:
            with open(os.path.join(SYSTEMD, n)) as f:
                text = f.read()
            assert "ExecStart=/usr/local/bin/wsgate " in text
            with open(os.path.join(d, n), "w") as f:
                f.write(text.replace("/usr/local/bin/wsgate ", gw.wsgate_bin() + " "))
        r = subprocess.run([exe, "verify", "--man=no"] + [os.path.join(d, n) for n in names],
                           capture_output=True, timeout=60)
        out = (r.stdout + r.stderr).decode()
        assert r.returncode == 0 and out.strip() == "", out
    finally:
        shutil.rmtree(d)


def test_systemd_units_guardrails_and_stop_timeout():
    g = unit(os.path.join(SYSTEMD, "wsgate.service"))["Service"]
    a = unit(os.path.join(SYSTEMD, "wsgate-agent.service"))["Service"]
    for s in (g, a):
        assert s["MemorySwapMax"] == "0"
        assert size_bytes(s["MemoryHigh"]) < size_bytes(s["MemoryMax"])
        assert s["NoNewPrivileges"] == "yes" and s["CapabilityBoundingSet"] == ""
        assert s["RestartPreventExitStatus"] == "2"  # a configuration error is not retried
    assert a["OOMPolicy"] == "continue"
    assert g["ExecStart"] == "/usr/local/bin/wsgate serve"
    assert g["ExecReload"] == "/bin/kill -HUP $MAINPID"
    env = env_file(os.path.join(SYSTEMD, "wsgate.env.example"))
    drain, budget = seconds(env["GATEWAY_DRAIN_DELAY"]), seconds(env["GATEWAY_SHUTDOWN_TIMEOUT"])
    assert seconds(g["TimeoutStopSec"]) > drain + budget
    assert int(g["LimitNOFILE"]) > int(env["GATEWAY_MAX_CONNECTIONS"])
    assert all(env[k] == "" for k in SECRET_VARS if k in env), "a secret value in the example environment"
    # The agent's command line starts a real agent.
    args = a["ExecStart"].split()
    assert args[0] == "/usr/local/bin/wsgate"
    stop_agent(*run_agent(args[1:], "deploy-test-secret"))


# ------------------------------------------------- Prometheus and Grafana

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan", "atan2"}


def promql_metrics(expr):
    """Metric names a PromQL expression selects."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)            # strings
    e = re.sub(r"\{[^}]*\}", "", e)                         # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                        # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", e):
        if m.group(2) or m.group(1).lower() in PROMQL_WORDS:
            continue
        names.add(m.group(1))
    return names


def load_rules():
    out = []
    for f in RULE_FILES:
        with open(os.path.join(PROM, f)) as fh:
            for g in yaml.safe_load(fh)["groups"]:
                for r in g["rules"]:
                    out.append((f, r))
    return out


def load_dashboard():
    import json
    with open(DASHBOARD) as f:
        return json.load(f)


def dashboard_exprs(d):
    exprs = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            exprs.append(t["expr"])
    for a in d.get("annotations", {}).get("list", []):
        if a.get("expr"):
            exprs.append(a["expr"])
    return exprs


def dashboard_metrics(d):
    names = set()
    for e in dashboard_exprs(d):
        names |= promql_metrics(e)
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((?:([a-zA-Z_:][\w:]*)(?:\{[^}]*\})?\s*,\s*)?\w+\)", v["query"]["query"])
            assert m and m.group(1), f"variable {v['name']}: unsupported query {v['query']['query']}"
            names.add(m.group(1))
    return names


def test_promql_metric_extraction():
    assert promql_metrics('sum by (job, le) (rate(a_total{x="b(c)"}[5m])) / ignoring(x) b == 0 or absent(up{j="k"})') \
        == {"a_total", "b", "up"}
    assert promql_metrics('histogram_quantile(0.95, sum by (leg, le) (rate(x_bucket{job=~"$j"}[$__rate_interval])))') \
        == {"x_bucket"}
    assert promql_metrics("time() - max by (leg) (t)") == {"t"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Metric names a live gateway and a live probe expose: the gateway with
    its default routes, the probe with one leg through it that saw an echo
    and then a drop (so its histograms and timestamps exist)."""
    d = tmp_path_factory.mktemp("exported")
    routes = d / "routes.json"
    # A browser route: its families exist from the start (the control plane
    # is never asked here).
    routes.write_text(json.dumps({"routes": [{"path": "/browsers", "kind": "browser",
                                              "control_plane": "http://127.0.0.1:9/", "subresources": ["cdp"]}]}))
    g = gw.Gateway(env={"GATEWAY_ROUTES_FILE": str(routes)})
    probe = None
    try:
        names = {n for n, _ in g.metrics()}
        probe = Probe([("direct", f"ws://127.0.0.1:{g.port}/probe/ws")])
        gw.wait_until(lambda: probe.value("wsgate_probe_rtt_seconds_count", leg="direct") >= 1, timeout=10,
                      what="probe echo")
        assert g.stop() == 0, g.stderr()[-3000:]
        gw.wait_until(lambda: sum(v for (n, _), v in probe.metrics().items()
                                  if n == "wsgate_probe_disconnects_total") >= 1, timeout=10, what="probe drop")
        names |= {n for n, _ in probe.metrics()}
    finally:
        g.stop()
        if probe:
            assert probe.stop() == 0, probe.stderr()[-3000:]
    assert not g.sanitizer_errors(), g.stderr()[-6000:]
    return names


@pytest.fixture(scope="module")
def metric_lists():
    with open(os.path.join(PROM, "metrics.yml")) as f:
        m = yaml.safe_load(f)
    return {x["name"] for x in m["planned"]}, {x["name"] for x in m["external"]}


def test_rules_check_and_unit_tests_pass():
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing (make deps installs prometheus)"
    r = subprocess.run([promtool, "check", "rules"] + RULE_FILES, cwd=PROM, capture_output=True, timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
    tests = sorted(f for f in os.listdir(os.path.join(PROM, "tests")) if f.endswith(".test.yml"))
    assert tests == ["wsgate-alerts.test.yml", "wsgate-probe-alerts.test.yml"]
    r = subprocess.run([promtool, "test", "rules"] + tests, cwd=os.path.join(PROM, "tests"),
                       capture_output=True, timeout=120)
    out = (r.stdout + r.stderr).decode()
    assert r.returncode == 0 and out.count("SUCCESS") == len(tests), out


def test_every_alert_has_a_runbook_page_and_a_firing_test():
    rules = load_rules()
    alerts = {r["alert"] for _, r in rules if "alert" in r}
    assert REQUIRED_ALERTS <= alerts, f"missing alerts: {REQUIRED_ALERTS - alerts}"
    pages = set()
    for _, r in rules:
        url = r["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_BASE) and url.endswith(".md"), url
        page = url[len(RUNBOOK_BASE):]
        assert os.path.isfile(os.path.join(RUNBOOKS, page)), f"{r['alert']}: no docs/runbooks/{page}"
        with open(os.path.join(RUNBOOKS, page)) as f:
            assert f"`{r['alert']}`" in f.read(), f"docs/runbooks/{page} does not name {r['alert']}"
        pages.add(page)
        assert r["labels"]["severity"] in ("page", "ticket")
    assert len(pages) == len(rules), "one page per alert"
    assert set(os.listdir(RUNBOOKS)) == pages | {"README.md"}, "a runbook page without an alert"
    fired = set()
    for f in os.listdir(os.path.join(PROM, "tests")):
        with open(os.path.join(PROM, "tests", f)) as fh:
            for t in yaml.safe_load(fh)["tests"]:
                for a in t.get("alert_rule_test", []):
                    if a.get("exp_alerts"):
                        fired.add(a["alertname"])
    assert fired == alerts, f"alerts without a firing test: {alerts - fired}"


def test_dashboard_parses_and_its_promql_is_valid(tmp_path):
    d = load_dashboard()
    assert d["uid"] and d["title"] and d["panels"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    exprs = dashboard_exprs(d)
    titles = " ".join(p["title"] for p in d["panels"]).lower()
    for topic in ("websockets", "handshakes", "closes by cause", "bytes relayed", "legs connected",
                  "backend health"):
        assert topic in titles, f"no panel about {topic}"
    # promtool parses every expression (as recording rules, Grafana's
    # variables replaced by values).
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}",
         "expr": e.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$route", ".*")
                  .replace("$probe_job", ".*")} for i, e in enumerate(exprs)]}]}
    f = tmp_path / "dashboard-rules.yml"
    f.write_text(yaml.safe_dump(rules))
    r = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()


def test_dashboard_uses_only_exported_metrics(exported):
    used = dashboard_metrics(load_dashboard())
    assert used, "no metric found in the dashboard"
    missing = used - exported
    assert not missing, f"dashboard uses metrics the binary does not export: {sorted(missing)}"
    # It shows every family the gateway and the probe export (build info as versions).
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert families - shown == set(), f"exported but not on the dashboard: {sorted(families - shown)}"


def test_every_metric_is_exported_or_listed(exported, metric_lists, k8s):
    planned, external = metric_lists
    used = {}
    for f, r in load_rules():
        for n in promql_metrics(r["expr"]):
            used.setdefault(n, set()).add(r["alert"])
    hpa = k8s[2][("HorizontalPodAutoscaler", "wsgate")]["spec"]["metrics"]
    for m in hpa:
        if m["type"] == "Pods":
            used.setdefault(m["pods"]["metric"]["name"], set()).add("HPA")
    unknown = {n: a for n, a in used.items() if n not in exported | planned | external}
    assert not unknown, f"metrics neither exported nor listed in deploy/prometheus/metrics.yml: {unknown}"
    now_exported = planned & exported
    assert not now_exported, (f"{sorted(now_exported)} are exported now: remove them from 'planned' in "
                              "deploy/prometheus/metrics.yml, add their dashboard panels and update the docs")
    assert not external & exported
    # Every listed name is used (the list does not rot).
    assert (planned | external) <= set(used), f"listed but unused: {(planned | external) - set(used)}"
    # The planned alerts are exactly the ones the docs call "not live yet".
    with open(os.path.join(RUNBOOKS, "README.md")) as f:
        readme = f.read()
    for n, alerts in used.items():
        if n in planned:
            for a in alerts:
                assert f"`{a}`" in readme.split("## Which alerts are live")[1].split("\n## ")[0]


# --------------------------------------------------------- service name

def test_service_name_sets_the_log_field(make_gateway):
    g = make_gateway(env={"GATEWAY_SERVICE_NAME": "edge-eu1"})
    with g.ws(path="/probe/ws") as w:
        w.send_text("hi")
        assert w.recv_message()[:2] == (1, b"hi")
    g.wait_log(lambda l: l["msg"] == "ws close")
    logs = g.logs()
    assert {l["msg"] for l in logs} >= {"gateway started", "ws open", "ws close"}
    assert {l["service"] for l in logs} == {"edge-eu1"}
    d = make_gateway()
    assert {l["service"] for l in d.logs()} == {"wsgate"}


def test_service_name_refused_when_not_a_label_value():
    r = gw.run_cli(["serve"], env={"GATEWAY_SERVICE_NAME": "ws gate"})
    assert r.returncode == 2
    lines = [l for l in r.stderr.decode().splitlines() if l.startswith("{")]
    assert len(lines) == 1 and "GATEWAY_SERVICE_NAME: \\\"ws gate\\\" may hold only letters" in lines[0], lines
