#!/usr/bin/env python3
"""Offline checks of yrelay's deploy files that no off-the-shelf linter does.

Called by deploy/validate (which installs the tools and runs the linters); run from the
repository root. Each subcommand prints one line per finding to stderr and exits 1 if there
was any, so that deploy/validate can report every finding and still fail.

The list of metric names the server exposes is not here: deploy/validate owns it and passes
it in the environment variable YRELAY_KNOWN_METRICS ("name type" per line).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from pathlib import Path

import yaml

FINDINGS: list[str] = []


def finding(where: str, message: str) -> None:
    FINDINGS.append(f"{where}: {message}")


def done() -> int:
    for f in FINDINGS:
        print(f"  FINDING {f}", file=sys.stderr)
    return 1 if FINDINGS else 0


# ------------------------------------------------------------------------------------------
# PromQL: which metric names a query reads.

# Series that are not yrelay's but may appear in queries (Prometheus' own scrape health).
FOREIGN_METRICS = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2", "start", "end",
}


def known_metrics() -> dict[str, str]:
    raw = os.environ.get("YRELAY_KNOWN_METRICS", "")
    metrics = {}
    for line in raw.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, kind = line.split()
        metrics[name] = kind
    if not metrics:
        sys.exit("checks.py: YRELAY_KNOWN_METRICS is empty (deploy/validate sets it)")
    return metrics


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, keywords,
    label names (inside {...} or by/on (...)), durations, numbers or strings."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", expr)  # strings
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery durations
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word = m.group(0)
        if word.lower() in PROMQL_KEYWORDS:
            continue
        rest = s[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function
        before = s[: m.start()]
        if re.search(r"[0-9.]$", before):
            continue  # part of a number such as 1e3
        names.add(word)
    return names


def check_metric_names(where: str, expr: str, metrics: dict[str, str]) -> set[str]:
    names = promql_metric_names(expr)
    used = set()
    if not names:
        finding(where, f"query selects no metric: {expr}")
    for name in names:
        if name in FOREIGN_METRICS:
            continue
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in metrics:
                base = name[: -len(suffix)]
                break
        if base not in metrics:
            finding(where, f"unknown metric {name!r} (not in deploy/validate's KNOWN_METRICS)")
            continue
        kind = metrics[base]
        if base != name and kind != "histogram":
            finding(where, f"{name!r}: {base} is a {kind}, not a histogram")
        if base == name and kind == "histogram":
            finding(where, f"{name!r} is a histogram: select {name}_bucket, _sum or _count")
        used.add(base)
    return used


def grafana_expr_for_promtool(expr: str) -> str:
    """Grafana's template variables replaced by values PromQL parses."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}", "5m", expr)
    expr = re.sub(r"\$\{?instance\}?", ".*", expr)
    if "$" in expr:
        finding("grafana", f"unhandled template variable in {expr}")
    return expr


# ------------------------------------------------------------------------------------------
# Subcommands


def cmd_dashboard(path: str, rules_out: str) -> int:
    """Dashboard JSON: structure, datasource, metric names; writes its queries as recording
    rules to rules_out so promtool can parse every one."""
    metrics = known_metrics()
    dash = json.loads(Path(path).read_text())
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dash:
            finding(path, f"missing top-level {key!r}")
    variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    if not {"datasource", "instance"} <= variables:
        finding(path, f"template variables 'datasource' and 'instance' expected, found {sorted(variables)}")
    ids = set()
    rules = []
    used = set()
    panels = list(dash.get("panels", []))
    for p in list(panels):
        panels.extend(p.get("panels", []))  # panels inside collapsed rows
    for p in panels:
        pid = p.get("id")
        where = f"{path} panel {pid} {p.get('title')!r}"
        if pid in ids:
            finding(where, "duplicate panel id")
        ids.add(pid)
        gp = p.get("gridPos", {})
        if not all(k in gp for k in ("h", "w", "x", "y")) or gp.get("x", 0) + gp.get("w", 0) > 24:
            finding(where, f"bad gridPos {gp}")
        if p.get("type") == "row":
            continue
        if not p.get("title"):
            finding(where, "panel without title")
        targets = p.get("targets") or []
        if not targets:
            finding(where, "panel without queries")
        for t in targets:
            ds = t.get("datasource") or p.get("datasource") or {}
            if ds.get("uid") != "${datasource}":
                finding(where, f"query datasource should be the ${{datasource}} variable, is {ds}")
            expr = t.get("expr", "")
            used |= check_metric_names(f"{where} query {t.get('refId')}", expr, metrics)
            rules.append({"record": f"dashboard:panel{pid}_{t.get('refId')}",
                          "expr": grafana_expr_for_promtool(expr)})
    Path(rules_out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    print(f"  {len(rules)} dashboard queries, {len(used)} metrics used")
    return done()


def cmd_rules(*paths: str) -> int:
    """Prometheus rule files (or PrometheusRule groups extracted from them): metric names."""
    metrics = known_metrics()
    for path in paths:
        doc = yaml.safe_load(Path(path).read_text())
        for g in doc.get("groups", []):
            for r in g.get("rules", []):
                name = r.get("alert") or r.get("record")
                check_metric_names(f"{path} {name}", str(r.get("expr", "")), metrics)
                if r.get("alert"):
                    if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                        finding(f"{path} {name}", "alert needs labels.severity critical|warning|info")
                    if not r.get("annotations", {}).get("summary"):
                        finding(f"{path} {name}", "alert needs annotations.summary")
    return done()


def cmd_adapter(path: str, rules_out: str) -> int:
    """prometheus-adapter values: metric names of its rules; the templated metricsQuery
    written out as recording rules for promtool."""
    metrics = known_metrics()
    doc = yaml.safe_load(Path(path).read_text())
    custom = (doc.get("rules") or {}).get("custom") or []
    if not custom:
        finding(path, "no rules.custom entry")
    rules = []
    for i, rule in enumerate(custom):
        where = f"{path} rules.custom[{i}]"
        check_metric_names(where + " seriesQuery", rule.get("seriesQuery", ""), metrics)
        series = promql_metric_names(rule.get("seriesQuery", ""))
        q = rule.get("metricsQuery", "")
        q = (q.replace("<<.Series>>", next(iter(series), "missing"))
              .replace("<<.LabelMatchers>>", 'namespace="yrelay",pod=~"yrelay-.*"')
              .replace("<<.GroupBy>>", "pod"))
        if "<<" in q:
            finding(where, f"unknown template in metricsQuery: {q}")
        rules.append({"record": f"adapter:rule{i}", "expr": q})
        overrides = (rule.get("resources") or {}).get("overrides") or {}
        if set(overrides) != {"namespace", "pod"}:
            finding(where, "resources.overrides must map the namespace and pod labels (Pods metric)")
        as_name = (rule.get("name") or {}).get("as")
        if as_name:
            hpa = yaml.safe_load(Path("deploy/k8s/base/hpa.yaml").read_text())
            names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
            if as_name not in names:
                finding(where, f"serves {as_name!r} but the HPA reads {names}")
    Path(rules_out).write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": rules}]}))
    return done()


def cmd_kustomization(directory: str) -> int:
    """Every YAML file in a kustomize directory is listed in its kustomization (or is the
    kustomization), and every listed file exists."""
    d = Path(directory)
    k = yaml.safe_load((d / "kustomization.yaml").read_text())
    listed = set()
    for r in k.get("resources", []):
        if not (d / r).exists():
            finding(str(d / "kustomization.yaml"), f"resource {r!r} does not exist")
        listed.add(r)
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        for f in gen.get("files", []):
            listed.add(f.split("=", 1)[-1])
    if k.get("secretGenerator"):
        finding(str(d), "secretGenerator: secrets must not live in the repository")
    for f in sorted(d.iterdir()):
        if f.is_file() and f.name != "kustomization.yaml" and f.suffix in (".yaml", ".yml", ".toml") and f.name not in listed:
            finding(str(f), "not listed in kustomization.yaml (so never applied or validated)")
    return done()


# Kinds the Prometheus Operator defines; kubernetes-validate has no schema for them.
CRD_KINDS = {"ServiceMonitor": "servicemonitor", "PrometheusRule": "prometheusrule"}


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def cmd_k8s(rendered: str, outdir: str, alerts: str, single_node: str) -> int:
    """A kustomize build: split core resources from CRDs for their validators, cross-check
    references between objects, and enforce the deployment's safety rules."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    docs = [d for d in yaml.safe_load_all(Path(rendered).read_text()) if d]
    core, by_kind = [], {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        if d["kind"] in CRD_KINDS:
            name = f"{CRD_KINDS[d['kind']]}-{d['metadata']['name']}.yaml"
            (out / name).write_text(yaml.safe_dump(d, sort_keys=False))
        elif d["apiVersion"].split("/")[0].endswith(".coreos.com"):
            finding(rendered, f"{d['kind']}: a CRD kind deploy/validate has no schema for")
        else:
            core.append(d)
    (out / "core.yaml").write_text(yaml.safe_dump_all(core, sort_keys=False))
    where = rendered

    if by_kind.get("Secret"):
        finding(where, "a Secret is rendered: secrets are created by hand, never kept in the repository")

    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    # Single node: one StatefulSet (sled on its own volume). Cluster mode: one stateless
    # Deployment (Redis + PostgreSQL from the Secret yrelay-cluster), no StatefulSet.
    workload = "StatefulSet" if single_node == "1" else "Deployment"
    other = "Deployment" if single_node == "1" else "StatefulSet"
    sts_list = by_kind.get(workload, [])
    if len(sts_list) != 1 or by_kind.get(other):
        finding(where, f"expected one {workload} and no {other}, found {len(sts_list)} and {len(by_kind.get(other, []))}")
        return done()
    sts = sts_list[0]
    pod = sts["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    if not labels_match(sts["spec"]["selector"]["matchLabels"], pod_labels):
        finding(where, f"{workload} selector does not match its pod labels")
    if workload == "StatefulSet":
        headless = services.get(sts["spec"]["serviceName"])
        if not headless or headless["spec"].get("clusterIP") != "None":
            finding(where, f"StatefulSet serviceName {sts['spec']['serviceName']!r} is not a headless Service")
    else:
        envs = {e["name"]: e for c in pod["spec"]["containers"] for e in c.get("env", [])}
        for name, key in (("YRELAY_REDIS_URL", "redis-url"), ("YRELAY_DATABASE_URL", "database-url")):
            ref = envs.get(name, {}).get("valueFrom", {}).get("secretKeyRef", {})
            if ref.get("name") != "yrelay-cluster" or ref.get("key") != key:
                finding(where, f"cluster mode: {name} must come from Secret yrelay-cluster key {key}")
        for s in services.values():
            if s["spec"].get("sessionAffinity", "None") != "None":
                finding(where, f"Service {s['metadata']['name']}: cluster mode needs no session affinity")
        if sts["spec"].get("replicas", 1) < 2:
            finding(where, "cluster mode: a Deployment of one replica is not a cluster")
        if "YRELAY_NODE_ID" not in envs:
            finding(where, "cluster mode: YRELAY_NODE_ID should name the pod (fieldRef metadata.name)")
        for v in pod["spec"].get("volumes", []):
            if "persistentVolumeClaim" in v:
                finding(where, f"cluster mode: volume {v['name']} is a PersistentVolumeClaim; nodes are stateless")
        for ing in by_kind.get("Ingress", []):
            for key in ing["metadata"].get("annotations", {}):
                if key.endswith(("/affinity", "/upstream-hash-by", "/session-cookie-name")):
                    finding(where, f"Ingress annotation {key}: cluster mode needs no sticky sessions")

    spec = pod["spec"]
    psc = spec.get("securityContext", {})
    if not (psc.get("runAsNonRoot") and psc.get("runAsUser") == 10001
            and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
        finding(where, "pod securityContext: runAsNonRoot, runAsUser 10001, seccomp RuntimeDefault expected")
    if spec.get("terminationGracePeriodSeconds", 30) < 30:
        finding(where, "terminationGracePeriodSeconds below 30 s: not enough to flush rooms")
    config_names = {c["metadata"]["name"] for c in by_kind.get("ConfigMap", [])}
    pvc_names = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for v in volumes.values():
        if "configMap" in v and v["configMap"]["name"] not in config_names:
            finding(where, f"volume {v['name']} refers to missing ConfigMap {v['configMap']['name']}")
    for c in spec["containers"]:
        cw = f"{where} container {c['name']}"
        csc = c.get("securityContext", {})
        if not (csc.get("readOnlyRootFilesystem") and csc.get("allowPrivilegeEscalation") is False
                and csc.get("capabilities", {}).get("drop") == ["ALL"]):
            finding(cw, "securityContext: readOnlyRootFilesystem, no privilege escalation, drop ALL expected")
        for kind in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})):
                finding(cw, f"resources.{workload} needs cpu and memory")
        port_names = {p["name"] for p in c.get("ports", [])}
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c.get(probe, {}).get("httpGet", {})
            if get.get("path") != path:
                finding(cw, f"{probe} should GET {path}")
            if get.get("port") not in port_names:
                finding(cw, f"{probe} port {get.get('port')!r} is not a container port")
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes and m["name"] not in pvc_names:
                finding(cw, f"volumeMount {m['name']} has no volume")
        for e in c.get("env", []):
            if "value" in e and re.search(r"SECRET|KEY|PASSWORD|TOKEN", e["name"]):
                finding(cw, f"env {e['name']} has a literal value: use secretKeyRef")
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref.get("name") not in ("yrelay-secrets", "yrelay-cluster"):
                finding(cw, f"env {e['name']} reads Secret {ref.get('name')!r}, documented are yrelay-secrets and yrelay-cluster")
        # Every Service that selects the pod exposes only container ports that exist.
        for s in services.values():
            if labels_match(s["spec"].get("selector"), pod_labels):
                for p in s["spec"]["ports"]:
                    if isinstance(p.get("targetPort"), str) and p["targetPort"] not in port_names:
                        finding(where, f"Service {s['metadata']['name']} targets missing port {p['targetPort']}")

    for ing in by_kind.get("Ingress", []):
        ann = ing["metadata"].get("annotations", {})
        for key in ("nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"):
            if int(ann.get(key, "0")) < 3600:
                finding(where, f"Ingress {key} should be at least 3600 for WebSockets")
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                svc = p["backend"]["service"]
                target = services.get(svc["name"])
                if not target or svc["port"].get("name") not in {x["name"] for x in target["spec"]["ports"]}:
                    finding(where, f"Ingress backend {svc} is not a Service port")

    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels):
            finding(where, "PodDisruptionBudget selects no yrelay pod")
        if "minAvailable" in pdb["spec"] and single_node == "1":
            finding(where, "PodDisruptionBudget minAvailable with one replica blocks every node drain")
        if single_node != "1":
            floor = min([sts["spec"].get("replicas", 1)] + [h["spec"].get("minReplicas", 1) for h in by_kind.get("HorizontalPodAutoscaler", [])])
            if "minAvailable" in pdb["spec"] and not 2 <= int(pdb["spec"]["minAvailable"]) < floor:
                finding(where, f"cluster mode: PDB minAvailable {pdb['spec']['minAvailable']} should be at least 2 and below {floor} replicas (or drains block)")
            if "maxUnavailable" in pdb["spec"] and pdb["spec"]["maxUnavailable"] != 1:
                finding(where, "cluster mode: PDB maxUnavailable should be 1")

    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    if len(hpas) != 1:
        finding(where, f"expected one HorizontalPodAutoscaler, found {len(hpas)}")
    for hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["kind"] != workload or ref["name"] != sts["metadata"]["name"]:
            finding(where, f"HPA targets {ref}, not the {workload}")
        if single_node != "1" and hpa["spec"].get("minReplicas", 1) < 2:
            finding(where, "cluster mode: HPA minReplicas below 2 leaves no node to fail over to")
        types = {m["type"] for m in hpa["spec"]["metrics"]}
        if types != {"Resource", "Pods"}:
            finding(where, f"HPA should scale on CPU (Resource) and connections (Pods), has {types}")
    if single_node == "1":
        # Single-node sled: a second replica would split rooms between unconnected stores.
        if sts["spec"].get("replicas", 1) != 1:
            finding(where, "single-node mode: StatefulSet replicas must be 1 (see deploy/k8s/cluster/README.md)")
        for hpa in hpas:
            if hpa["spec"]["maxReplicas"] != 1:
                finding(where, "single-node mode: HPA maxReplicas must be 1 until cluster mode")

    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"].get("matchLabels", {})
        matched = [s for s in services.values() if labels_match(sel, s["metadata"].get("labels", {}))]
        if len(matched) != 1:
            finding(where, f"ServiceMonitor selects {len(matched)} Services (want exactly 1: each pod scraped once)")
        for s in matched:
            names = {p["name"] for p in s["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in names:
                    finding(where, f"ServiceMonitor port {ep.get('port')!r} not on Service {s['metadata']['name']}")

    reference = yaml.safe_load(Path(alerts).read_text())
    for pr in by_kind.get("PrometheusRule", []):
        groups = pr["spec"]["groups"]
        (out / f"prometheusrule-{pr['metadata']['name']}.rules.yml").write_text(
            yaml.safe_dump({"groups": groups}, sort_keys=False))
        if groups != reference["groups"]:
            finding(where, f"PrometheusRule {pr['metadata']['name']} groups differ from {alerts}")
    if not by_kind.get("PrometheusRule"):
        finding(where, "no PrometheusRule")
    print(f"  {len(core)} core resources, {sum(len(by_kind.get(k, [])) for k in CRD_KINDS)} custom resources")
    return done()


# `${VAR}`, `${VAR:-default}`, `${VAR:?message}` ... (not `$${...}`, an escaped dollar).
COMPOSE_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z0-9_]+)(?:(:?[?])([^}]*)|(:?-)([^}]*))?\}")
SECRET_NAME = re.compile(r"SECRET|KEY|PASSWORD|TOKEN")
# What plain `docker compose up` starts.
SINGLE_NODE_STACK = {"yrelay", "prometheus", "grafana"}


def compose_env(svc: dict) -> dict:
    env = svc.get("environment", {}) or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return env


def compose_required_vars(value) -> set[str]:
    """Variables a value requires (`${VAR:?...}` / `${VAR?...}`), anywhere inside it."""
    text = yaml.safe_dump(value, width=10**9) if not isinstance(value, str) else value
    return {m.group(1) for m in COMPOSE_VAR.finditer(text) if m.group(2)}


def compose_default(text: str) -> str:
    """A compose string with every `${VAR:-default}` replaced by its default."""
    return COMPOSE_VAR.sub(lambda m: m.group(5) or "", text)


def compose_host_ports(svc: dict) -> list[tuple[str, str]]:
    """(host port with defaults applied, container port) of every published port."""
    out = []
    for port in svc.get("ports", []):
        if isinstance(port, dict):
            out.append((str(port.get("published", "")), str(port.get("target", ""))))
            continue
        parts = compose_default(str(port)).split(":")
        if len(parts) >= 2:
            out.append((parts[-2], parts[-1].split("/")[0]))
    return out


def nginx_directives(text: str) -> list[tuple[list[str], list[str]]]:
    """nginx config as (enclosing block names, directive words) pairs; comments dropped."""
    text = re.sub(r"#[^\n]*", "", text)
    tokens = re.findall(r"'[^']*'|\"[^\"]*\"|[{};]|[^\s{};]+", text)
    out, stack, words = [], [], []
    for t in tokens:
        if t == "{":
            stack.append(" ".join(words))
            words = []
        elif t == "}":
            stack.pop()
        elif t == ";":
            out.append((list(stack), words))
            words = []
        else:
            words.append(t.strip("'\""))
    return out


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    if not m:
        return -1
    return int(m.group(1)) * {"ms": 0.001, None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def cmd_compose(path: str, nginx_conf: str, prometheus_yml: str) -> int:
    """docker-compose.yml: no secret is written in it, every file it mounts exists, images are
    pinned; the `cluster` profile adds nodes on Redis + PostgreSQL behind nginx without
    changing what plain `docker compose up` starts or requires."""
    doc = yaml.safe_load(Path(path).read_text())
    services = doc.get("services", {})
    default = {n: s for n, s in services.items() if not s.get("profiles")}
    if set(default) != SINGLE_NODE_STACK:
        finding(path, f"plain `docker compose up` starts {sorted(default)}, expected the single-node stack "
                      f"{sorted(SINGLE_NODE_STACK)} (everything else belongs in a profile)")
    cluster = {n: s for n, s in services.items() if "cluster" in (s.get("profiles") or [])}

    # Compose interpolates every service (and x- fragment) whatever the active profiles, so a
    # variable only the cluster profile needs must not be `${VAR:?}`: plain `up` would fail.
    required_default = set()
    for s in default.values():
        required_default |= compose_required_vars(s)
    for var in sorted(compose_required_vars(doc) - required_default):
        finding(path, f"${{{var}:?...}} is required by no service of plain `docker compose up`, but compose "
                      "interpolates every profile: plain `up` would refuse to start without it")

    for name, svc in services.items():
        profiled = bool(svc.get("profiles"))
        for key, value in compose_env(svc).items():
            if SECRET_NAME.search(key):
                var = re.fullmatch(r"\$\{([A-Z0-9_]+)(:\?[^}]+|:-|-)?\}", value) if isinstance(value, str) else None
                if not var or (not profiled and not (var.group(2) or "").startswith(":?")):
                    finding(f"{path} {name}", f"{key} must be ${{VAR:?message}} from the environment "
                                              f"(${{VAR:-}} in a profile's service), is {value!r}")
            # A password inside a URL comes from the environment too.
            if isinstance(value, str):
                for cred in re.findall(r"://[^:/@\s]+:([^@\s]*)@", value):
                    if not re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]+|:-|-)?\}", cred):
                        finding(f"{path} {name}", f"{key}: the password in the URL must be a ${{VAR}} reference")
        build = svc.get("build")
        if isinstance(build, dict):
            dockerfile = Path(build.get("context", ".")) / build.get("dockerfile", "Dockerfile")
            if not dockerfile.exists():
                finding(f"{path} {name}", f"Dockerfile {dockerfile} does not exist")
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith((".", "/")) and not Path(source).exists():
                finding(f"{path} {name}", f"bind mount source {source} does not exist")
        image = svc.get("image", "")
        if image and "build" not in svc and (":" not in image or image.endswith(":latest")):
            finding(f"{path} {name}", f"image {image!r} should be pinned to a version tag")
        if not profiled:
            deps = svc.get("depends_on", [])
            for dep in deps if isinstance(deps, list) else deps.keys():
                if services.get(dep, {}).get("profiles"):
                    finding(f"{path} {name}", f"depends on {dep}, which only a profile starts")

    # Both stacks can run at once: no host port published twice.
    seen: dict[str, str] = {}
    for name, svc in services.items():
        for host, _ in compose_host_ports(svc):
            host_port = host.rsplit(":", 1)[-1] if host else ""
            if host_port in seen:
                finding(path, f"host port {host_port} is published by {seen[host_port]} and {name}")
            seen[host_port] = name

    if not cluster:
        finding(path, "no service in profile `cluster`")
        return done()
    where = f"{path} profile cluster"
    nodes = {n: s for n, s in cluster.items() if "YRELAY_REDIS_URL" in compose_env(s)}
    if len(nodes) < 2:
        finding(where, f"{len(nodes)} yrelay node(s) with YRELAY_REDIS_URL: a cluster needs at least 2 (3 expected)")
    ids = {}
    for name, svc in nodes.items():
        env = compose_env(svc)
        nw = f"{where} {name}"
        for key, scheme in (("YRELAY_REDIS_URL", "redis://"), ("YRELAY_DATABASE_URL", "postgres://")):
            url = str(env.get(key) or "")
            if not url.startswith(scheme):
                finding(nw, f"{key} should be a {scheme} URL, is {url!r}")
                continue
            host = re.sub(r"^.*@", "", url[len(scheme):]).split("/")[0].split(":")[0]
            if host not in cluster:
                finding(nw, f"{key} points at {host!r}, not a service of the cluster profile")
            elif not cluster[host].get("healthcheck"):
                finding(nw, f"{host} has no healthcheck: nodes would start before it answers")
            else:
                deps = svc.get("depends_on")
                condition = deps.get(host, {}).get("condition") if isinstance(deps, dict) else None
                if condition != "service_healthy":
                    finding(nw, f"should depend on {host} with condition service_healthy")
        node_id = str(env.get("YRELAY_NODE_ID") or "")
        if not node_id:
            finding(nw, "no YRELAY_NODE_ID: logs and cluster messages could not tell the nodes apart")
        elif node_id in ids:
            finding(nw, f"YRELAY_NODE_ID {node_id!r} is also {ids[node_id]}'s")
        ids[node_id] = name
        if svc.get("ports"):
            finding(nw, "publishes a port: nodes are reached through the load balancer only")
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if not source.startswith((".", "/")):
                finding(nw, f"named volume {source}: cluster nodes keep no state (PostgreSQL does)")

    # The load balancer: nginx with deploy/nginx/cluster.conf, in front of exactly the nodes.
    lbs = [n for n, s in cluster.items()
           if any(str(v).startswith(f"./{nginx_conf}:") for v in s.get("volumes", []))]
    if len(lbs) != 1:
        finding(where, f"expected one service mounting ./{nginx_conf}, found {lbs}")
        return done()
    lb = cluster[lbs[0]]
    lw = f"{where} {lbs[0]}"
    if not str(lb.get("image", "")).startswith("nginx:"):
        finding(lw, f"image {lb.get('image')!r}: {nginx_conf} is an nginx config")
    deps = lb.get("depends_on") or {}
    if set(deps) != set(nodes):
        finding(lw, f"depends on {sorted(deps)}, the nodes are {sorted(nodes)}")
    directives = nginx_directives(Path(nginx_conf).read_text())
    upstreams: dict[str, list[str]] = {}
    for blocks, words in directives:
        if blocks and blocks[-1].startswith("upstream ") and words[0] == "server":
            upstreams.setdefault(blocks[-1].split()[1], []).append(words[1])
        if words[0] in ("ip_hash", "hash", "sticky", "least_conn") or (words[0] == "random"):
            finding(nginx_conf, f"`{' '.join(words)}`: round robin without affinity expected")
    listens = [w[1] for b, w in directives if w[0] == "listen"]
    published = {target for _, target in compose_host_ports(lb)}
    if not listens or any(port.rsplit(":", 1)[-1] not in published for port in listens):
        finding(lw, f"publishes container ports {sorted(published)}, nginx listens on {listens}")
    passes = [w[1] for b, w in directives if w[0] == "proxy_pass"]
    if len(passes) != 1 or not passes[0].startswith("http://") or passes[0][7:] not in upstreams:
        finding(nginx_conf, f"proxy_pass {passes}: expected one proxy_pass to an upstream block")
    else:
        servers = upstreams[passes[0][7:]]
        hosts = sorted(s.rsplit(":", 1)[0] for s in servers)
        if hosts != sorted(nodes):
            finding(nginx_conf, f"upstream servers {hosts}, the compose nodes are {sorted(nodes)}")
        for server in servers:
            if not server.endswith(":1234"):
                finding(nginx_conf, f"upstream server {server}: the nodes listen on 1234")
    sets = {tuple(w[1:3]) for b, w in directives if w[0] == "proxy_set_header"}
    if ("Upgrade", "$http_upgrade") not in sets:
        finding(nginx_conf, "proxy_set_header Upgrade $http_upgrade missing: WebSocket upgrades would fail")
    if not any(k == "Connection" and v in ("$connection_upgrade", "upgrade") for k, v in sets):
        finding(nginx_conf, "proxy_set_header Connection $connection_upgrade missing: WebSocket upgrades would fail")
    if ["proxy_http_version", "1.1"] not in [w for _, w in directives]:
        finding(nginx_conf, "proxy_http_version 1.1 missing: WebSocket upgrades need HTTP/1.1 to the node")
    for key in ("proxy_read_timeout", "proxy_send_timeout"):
        values = [seconds(w[1]) for _, w in directives if w[0] == key]
        if not values or min(values) < 3600:
            finding(nginx_conf, f"{key} should be at least 3600s for idle WebSockets")

    # Prometheus scrapes the nodes, in a job that has no target while the profile is off.
    prom = yaml.safe_load(Path(prometheus_yml).read_text())
    metrics_ports = {str(compose_env(s).get("YRELAY_METRICS_LISTEN", "")).rsplit(":", 1)[-1] for s in nodes.values()}
    scraped = {}
    for job in prom.get("scrape_configs", []):
        for sd in job.get("dns_sd_configs", []):
            for n in sd.get("names", []):
                scraped[n] = (job["job_name"], str(sd.get("port")))
        for sc in job.get("static_configs", []):
            for t in sc.get("targets", []):
                host, _, port = t.rpartition(":")
                if host in nodes:
                    finding(prometheus_yml, f"job {job['job_name']}: static target {t} is down whenever the "
                                            "cluster profile is off; discover the nodes by DNS (dns_sd_configs)")
                scraped.setdefault(host, (job["job_name"], port))
    for name in nodes:
        job, port = scraped.get(name, (None, None))
        if job is None:
            finding(prometheus_yml, f"no job scrapes the cluster node {name}")
        elif job == "yrelay":
            finding(prometheus_yml, f"{name} is in job yrelay, whose availability alerts assume the single node")
        elif port not in metrics_ports:
            finding(prometheus_yml, f"{name} scraped on port {port}, its YRELAY_METRICS_LISTEN port is {metrics_ports}")
    return done()


def cmd_toml(path: str, reference: str) -> int:
    """A yrelay config file sets only keys the reference file (every key) has: yrelay refuses
    unknown keys at start."""
    def keys(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from keys(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"
    ref = set(keys(tomllib.loads(Path(reference).read_text())))
    for k in keys(tomllib.loads(Path(path).read_text())):
        if k not in ref:
            finding(path, f"key {k!r} is not in {reference}")
    return done()


def cmd_metrics_doc(doc: str, *files: str) -> int:
    """Every yrelay metric the deploy files use is documented in docs/metrics.md."""
    metrics = known_metrics()
    text = Path(doc).read_text()
    used = set()
    for f in files:
        used |= {m for m in re.findall(r"yrelay_[a-z0-9_]+", Path(f).read_text())}
    for m in sorted(used):
        base = m
        for suffix in HISTOGRAM_SUFFIXES:
            if m.endswith(suffix) and m[: -len(suffix)] in metrics:
                base = m[: -len(suffix)]
        if base in metrics and base not in text:
            finding(doc, f"{base} is used by the deploy files but not documented")
    return done()


def dockerignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over slash paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out += "/?"
                i += 1
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def cmd_dockerignore(dockerfile: str, ignore_file: str, files_list: str) -> int:
    """Every file the image build reads reaches the build context: the sources of the
    Dockerfile's COPY lines (build stage) exist, and no file under them (from files_list, one
    repository path a line) is excluded by .dockerignore. A missing bench or test file would
    break `cargo build`, whose manifests declare them."""
    rules = []
    for line in Path(ignore_file).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        rules.append((negate, dockerignore_regex(pattern)))

    def ignored(path: str) -> bool:
        parts = path.split("/")
        result = False
        for negate, rx in rules:
            if any(rx.match("/".join(parts[: n + 1])) for n in range(len(parts))):
                result = not negate
        return result

    sources = []
    for line in Path(dockerfile).read_text().splitlines():
        m = re.match(r"\s*COPY\s+(?!--from)(.*)", line)
        if m:
            args = [a for a in m.group(1).split() if not a.startswith("--")]
            sources += args[:-1]
    if not sources:
        finding(dockerfile, "no COPY from the build context found")
    files = [f for f in Path(files_list).read_text().splitlines() if f]
    for src in sources:
        src = src.rstrip("/")
        if not Path(src).exists():
            finding(dockerfile, f"COPY source {src} does not exist")
        if ignored(src):
            finding(ignore_file, f"excludes {src}, which the Dockerfile copies")
        for f in files:
            if (f == src or f.startswith(src + "/")) and ignored(f) and "/node_modules/" not in f:
                finding(ignore_file, f"excludes {f}, part of {src} that the build reads")
    for must in (".git", ".env", "target"):
        if not ignored(must):
            finding(ignore_file, f"should exclude {must}")
    return done()


COMMANDS = {
    "dashboard": cmd_dashboard,
    "rules": cmd_rules,
    "adapter": cmd_adapter,
    "kustomization": cmd_kustomization,
    "k8s": cmd_k8s,
    "compose": cmd_compose,
    "toml": cmd_toml,
    "metrics-doc": cmd_metrics_doc,
    "dockerignore": cmd_dockerignore,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: checks.py {{{','.join(COMMANDS)}}} ARGS...")
    sys.exit(COMMANDS[sys.argv[1]](*sys.argv[2:]))
