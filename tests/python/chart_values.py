"""Checks a values file for an actions-runner-controller chart that cannot be rendered here (no
helm, no network): every key must be one the chart's values.yaml documents, and the pod spec the
file gives the chart must be a valid Pod spec (kubernetes-validate, strict).

    python3 chart_values.py CHART VALUES.yaml KUBERNETES_VERSION

CHART is gha-runner-scale-set or gha-runner-scale-set-experimental. Prints one line per problem
and exits 1 when there is any.
"""

import os
import subprocess
import sys
import tempfile

import yaml

# A value that is a Kubernetes object (checked as a Pod below) or a free map (labels,
# annotations, secrets' fields).
POD_SPEC = "PodSpec"
CONTAINER = "Container"
ANY = "any"

META = {"metadata": {"labels": ANY, "annotations": ANY}}

# gha-runner-scale-set's values.yaml at actions/actions-runner-controller commit 8a5daf9
# (its keys and the commented ones it documents), with keyVault and listenerMetrics from
# templates/autoscalingrunnerset.yaml at 03c274d.
STABLE = {
    "githubConfigUrl": ANY,
    "githubConfigSecret": ANY,
    "proxy": ANY,
    "maxRunners": ANY,
    "minRunners": ANY,
    "runnerGroup": ANY,
    "runnerScaleSetName": ANY,
    "githubServerTLS": ANY,
    "keyVault": ANY,
    "containerMode": {
        "type": ANY,
        "kubernetesModeWorkVolumeClaim": ANY,
        "kubernetesModeServiceAccount": ANY,
    },
    "listenerTemplate": ANY,
    "listenerMetrics": ANY,
    "template": {"metadata": {"labels": ANY, "annotations": ANY}, "spec": POD_SPEC},
    "controllerServiceAccount": {"namespace": ANY, "name": ANY},
}

# gha-runner-scale-set-experimental 0.14.0's values.yaml at commit 87c9183 (its keys and the
# commented ones it documents), with runner.dind.container.name and .securityContext from
# templates/_mode_dind.tpl at the same commit.
EXPERIMENTAL = {
    "namespaceOverride": ANY,
    "scaleset": {"name": ANY, "runnerGroup": ANY, "minRunners": ANY, "maxRunners": ANY},
    "auth": {
        "url": ANY,
        "githubToken": ANY,
        "secretName": ANY,
        "app": {"clientId": ANY, "installationId": ANY, "privateKey": ANY},
    },
    "secretResolution": {"type": ANY, "proxy": ANY, "azureKeyVault": ANY},
    "proxy": ANY,
    "listenerPodTemplate": ANY,
    "resource": {
        name: dict(META, **({"extraRules": ANY} if name in ("managerRole", "kubernetesModeRole") else {}))
        for name in (
            "all",
            "autoscalingRunnerSet",
            "managerRole",
            "managerRoleBinding",
            "noPermissionServiceAccount",
            "kubernetesModeRoleBinding",
            "kubernetesModeRole",
            "kubernetesModeServiceAccount",
        )
    },
    "runner": {
        "mode": ANY,
        "pod": {"metadata": {"labels": ANY, "annotations": ANY}, "spec": POD_SPEC},
        "container": CONTAINER,
        "dind": {
            "copyExternals": ANY,
            "dockerGroupId": ANY,
            "dockerSock": ANY,
            "waitForDockerInSeconds": ANY,
            "container": {"image": ANY, "name": ANY, "securityContext": ANY},
        },
        "kubernetesMode": {
            "serviceAccountName": ANY,
            "hookPath": ANY,
            "requireJobContainer": ANY,
            "extensionRef": ANY,
            "extension": ANY,
        },
    },
    "githubServerTLS": ANY,
    "controllerServiceAccount": {"namespace": ANY, "name": ANY},
    "listenerMetrics": ANY,
}

CHARTS = {"gha-runner-scale-set": STABLE, "gha-runner-scale-set-experimental": EXPERIMENTAL}


def unknown_keys(values, schema, path=""):
    """The keys of `values` that `schema` does not document, as dotted paths."""
    if not isinstance(schema, dict):
        return []
    if not isinstance(values, dict):
        return [f"{path or '.'}: expected a map"]
    wrong = []
    for key, value in values.items():
        where = f"{path}.{key}" if path else key
        if key not in schema:
            wrong.append(f"{where}: not a key of the chart's values.yaml")
        else:
            wrong.extend(unknown_keys(value, schema[key], where))
    return wrong


def pod_of(chart, values):
    """The Pod manifest the values give the chart, as far as they write it."""
    if chart == "gha-runner-scale-set":
        template = values.get("template", {})
        metadata = dict(template.get("metadata", {}))
        spec = template.get("spec", {})
    else:
        runner = values.get("runner", {})
        metadata = dict(runner.get("pod", {}).get("metadata", {}))
        spec = dict(runner.get("pod", {}).get("spec", {}))
        container = dict(runner.get("container", {}), name="runner")
        spec["containers"] = [container] + list(spec.get("containers", []))
    metadata["name"] = "runner"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def main():
    chart, file, version = sys.argv[1:4]
    with open(file) as f:
        values = yaml.safe_load(f)
    wrong = unknown_keys(values, CHARTS[chart])
    with tempfile.TemporaryDirectory() as tmp:
        pod = os.path.join(tmp, "pod.yaml")
        with open(pod, "w") as f:
            yaml.safe_dump(pod_of(chart, values), f)
        out = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, pod],
            capture_output=True,
            text=True,
        )
        print(out.stdout + out.stderr, end="")
        if out.returncode != 0:
            wrong.append("the pod spec does not match the Kubernetes schema")
    for line in wrong:
        print(f"{file}: {line}")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
