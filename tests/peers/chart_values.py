"""The Helm chart test's YAML side (PyYAML): `context CHART_DIR OVERRIDES_JSON`
prints the render context (Chart.yaml, values.yaml deep-merged with the
overrides, a release); `documents RENDERED_YAML` prints the rendered
manifests as a JSON list."""

import json
import sys

import yaml


def merge(base, over):
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def context(chart_dir, overrides):
    with open(f"{chart_dir}/Chart.yaml") as f:
        chart = yaml.safe_load(f)
    with open(f"{chart_dir}/values.yaml") as f:
        values = yaml.safe_load(f)
    return {
        "Values": merge(values, json.loads(overrides)),
        "Chart": {
            "Name": chart["name"],
            "Version": chart["version"],
            "AppVersion": chart["appVersion"],
        },
        "Release": {"Name": "clew", "Namespace": "observability"},
    }


def main():
    if sys.argv[1] == "context":
        print(json.dumps(context(sys.argv[2], sys.argv[3])))
    elif sys.argv[1] == "documents":
        with open(sys.argv[2]) as f:
            print(json.dumps([d for d in yaml.safe_load_all(f) if d is not None]))
    else:
        sys.exit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    main()
