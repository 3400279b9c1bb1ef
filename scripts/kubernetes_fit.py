"""Checks that the manifests of ops/kubernetes fit together, beyond what a schema can say.

Run by scripts/kubernetes-check.sh: every resource the kustomization lists exists and nothing
else is there; Services and the PodDisruptionBudget select the Deployment's pods; probes,
Services and the ServiceMonitor name ports the container has; the probes use the gate's
health routes; the grace period covers the drain delay and the shutdown timeout the ConfigMap
sets; the migration Job and the Deployment read the same ConfigMap and Secret; the Secret holds
every secret setting `serve` needs.
"""

import pathlib
import sys

import yaml

root = pathlib.Path(sys.argv[1])
problems = []


def check(ok, message):
    if not ok:
        problems.append(message)


docs = {}
for path in sorted(root.glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            docs.setdefault(doc["kind"], []).append(doc)

kustomization = docs["Kustomization"][0]
listed = set(kustomization["resources"])
present = {p.name for p in root.glob("*.yaml")} - {"kustomization.yaml"}
check(listed == present, f"kustomization lists {sorted(listed)}, the folder has {sorted(present)}")

deployment = docs["Deployment"][0]
pod = deployment["spec"]["template"]
pod_labels = pod["metadata"]["labels"]
check(
    deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(),
    "the Deployment's selector does not select its pods",
)
container = pod["spec"]["containers"][0]
ports = {p["name"] for p in container["ports"]}
for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
    get = container[probe]["httpGet"]
    check(get["port"] in ports, f"{probe} uses port {get['port']}, not one of {ports}")
check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness is not /healthz")
check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness is not /readyz")

config = docs["ConfigMap"][0]["data"]
grace = pod["spec"]["terminationGracePeriodSeconds"]
needed = (int(config["FLASHGATE_SHUTDOWN_DRAIN_DELAY_MS"]) + int(config["FLASHGATE_SHUTDOWN_TIMEOUT_MS"])) / 1000
check(grace > needed, f"terminationGracePeriodSeconds {grace} does not cover drain + shutdown ({needed} s)")
admin_port = int(config["FLASHGATE_ADMIN_LISTEN"].rsplit(":", 1)[1])
check(
    any(p["name"] == "admin" and p["containerPort"] == admin_port for p in container["ports"]),
    "the admin port is not FLASHGATE_ADMIN_LISTEN's",
)

for service in docs["Service"]:
    name = service["metadata"]["name"]
    check(service["spec"]["selector"].items() <= pod_labels.items(), f"Service {name} selects no gate pod")
    for port in service["spec"]["ports"]:
        check(port["targetPort"] in ports, f"Service {name} targets port {port['targetPort']}")
public = [s for s in docs["Service"] if s["metadata"]["name"] == "flashgate"][0]
check(
    all(p["targetPort"] != "admin" for p in public["spec"]["ports"]),
    "the public Service exposes the operators' port",
)

monitor = docs["ServiceMonitor"][0]
monitored = [
    s for s in docs["Service"]
    if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()
]
check(len(monitored) == 1, f"the ServiceMonitor selects {len(monitored)} Services, not the admin one")
for endpoint in monitor["spec"]["endpoints"]:
    check(
        any(p["name"] == endpoint["port"] for s in monitored for p in s["spec"]["ports"]),
        f"the ServiceMonitor scrapes port {endpoint['port']}, which its Service does not name",
    )
    check(endpoint["path"] == "/metrics", "the ServiceMonitor does not scrape /metrics")

budget = docs["PodDisruptionBudget"][0]
check(budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), "the PDB selects no gate pod")
autoscaler = docs["HorizontalPodAutoscaler"][0]
check(autoscaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"], "the HPA scales something else")
check(autoscaler["spec"]["minReplicas"] > budget["spec"]["minAvailable"], "the PDB would block every drain at minReplicas")

job = docs["Job"][0]
job_container = job["spec"]["template"]["spec"]["containers"][0]
check(job_container["args"] == ["migrate"], "the Job does not run `flashgate migrate`")
check(job_container["envFrom"] == container["envFrom"], "the Job and the gate read different settings")
check(container["args"] == ["serve"], "the Deployment does not run `flashgate serve`")

secret = docs["Secret"][0]["stringData"]
for setting in ("DATABASE_URL", "REDIS_URL", "FLASHGATE_JWT_SECRET", "FLASHGATE_ADMIN_TOKEN"):
    check(setting in secret, f"the Secret lacks {setting}")

if problems:
    print("ops/kubernetes does not fit together:", *problems, sep="\n  ", file=sys.stderr)
    sys.exit(1)
