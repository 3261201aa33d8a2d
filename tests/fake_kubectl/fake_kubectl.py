"""A `kubectl` stand-in for the deploy tests: no cluster can run where the tests run.

It is a small in-memory API server for SeldonDeployments, kept in a JSON file between calls
($FAKE_KUBECTL_STATE): `apply -f` stores each SeldonDeployment with kubectl's last-applied
annotation, `create -f` stores it without one, `get -o json` and `apply view-last-applied` read
it back, `delete -f` removes it. A smoke request (`create --raw` to a predictor's Service) is
answered only if that predictor exists, and, with $FAKE_KUBECTL_UPSTREAM_<PREDICTOR> set to a
host:port, by the real server there. Seldon's operator, the rollout and the network are not
modelled: `wait` and `rollout status` succeed unless told to fail.

Every call (arguments, and what it saw of KUBECONFIG) is one JSON line in $FAKE_KUBECTL_LOG.
Controls, all environment variables:
  FAKE_KUBECTL_FAIL      comma-separated steps that fail: `wait` fails every wait, `wait:1` only
                         the first. Steps: get, view-last-applied, apply, dry-run, wait, rollout,
                         smoke, delete.
  FAKE_KUBECTL_SMOKE     `wrong-rows` or `not-json` to break every smoke answer.
  FAKE_KUBECTL_BROKEN_IMAGES  comma-separated images whose predictors answer 503.
  FAKE_KUBECTL_FORWARD_TO  host:port that `port-forward` forwards its local port to (a real
                         server on loopback standing in for the predictor's Service).
"""

import contextlib
import json
import os
import re
import socket
import stat
import sys
import threading
import urllib.error
import urllib.request

import yaml

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
SERVICE = re.compile(r"/namespaces/([^/]+)/services/([^/:]+):\d+/proxy(/.*)$")


def step_of(args):
    """Name the step a command line belongs to."""
    if args[:2] == ["apply", "view-last-applied"]:
        return "view-last-applied"
    if args[:1] == ["apply"] and "--dry-run=server" in args:
        return "dry-run"
    if args[:2] == ["create", "--raw"]:
        return "smoke"
    return args[0] if args else ""


def option(args, name, default=None):
    """The value after `name` in the arguments."""
    return args[args.index(name) + 1] if name in args else default


def load_state():
    path = os.environ["FAKE_KUBECTL_STATE"]
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def save_state(state):
    path = os.environ["FAKE_KUBECTL_STATE"]
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=1)
    os.replace(path + ".tmp", path)


def seldon_deployments(args):
    """The SeldonDeployments of the `-f` file, each with the namespace it goes to."""
    with open(option(args, "-f"), encoding="utf-8") as handle:
        documents = [doc for doc in yaml.safe_load_all(handle) if doc]
    found = []
    for doc in documents:
        if doc.get("kind") == "SeldonDeployment":
            namespace = doc["metadata"].get("namespace") or option(args, "--namespace", "default")
            found.append((f"{namespace}/{doc['metadata']['name']}", doc))
    return found


def key_of(args):
    """`namespace/name` of a `seldondeployment/NAME` argument."""
    resource = next(arg for arg in args if arg.startswith("seldondeployment/"))
    return f"{option(args, '--namespace', 'default')}/{resource.split('/', 1)[1]}"


def store(args, with_last_applied):
    state = load_state()
    for key, doc in seldon_deployments(args):
        live = json.loads(json.dumps(doc))
        annotations = live["metadata"].setdefault("annotations", {})
        if with_last_applied:
            annotations[LAST_APPLIED] = json.dumps(doc, sort_keys=True)
        live["status"] = {"state": "Available"}
        state[key] = live
        print(f"seldondeployment.machinelearning.seldon.io/{key.split('/')[1]} configured")
    save_state(state)
    return 0


def smoke(args):
    """Answer a prediction sent to a predictor's Service through the API server proxy."""
    namespace, service, path = SERVICE.search(args[2]).groups()
    with open(option(args, "-f"), encoding="utf-8") as handle:
        body = handle.read()
    predictor = None
    for key, live in load_state().items():
        name = key.split("/", 1)[1]
        if key.startswith(namespace + "/") and service.startswith(name + "-"):
            wanted = service[len(name) + 1 :]
            predictor = next((p for p in live["spec"]["predictors"] if p["name"] == wanted), None)
    if predictor is None:
        print(f'Error from server (NotFound): services "{service}" not found', file=sys.stderr)
        return 1
    images = {
        container["image"]
        for component in predictor.get("componentSpecs", [])
        for container in component["spec"]["containers"]
    }
    broken = set(filter(None, os.environ.get("FAKE_KUBECTL_BROKEN_IMAGES", "").split(",")))
    if images & broken:
        print("Error from server (ServiceUnavailable): the server is unavailable", file=sys.stderr)
        return 1
    upstream = os.environ.get(f"FAKE_KUBECTL_UPSTREAM_{predictor['name'].upper()}")
    if upstream:
        request = urllib.request.Request(
            f"http://{upstream}{path}", body.encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                sys.stdout.write(response.read().decode())
        except (urllib.error.URLError, OSError) as error:
            print(f"Error from server: {error}", file=sys.stderr)
            return 1
        return 0
    rows = len(json.loads(body)["data"]["ndarray"])
    broken_answer = os.environ.get("FAKE_KUBECTL_SMOKE", "")
    if broken_answer == "not-json":
        print("<html>503 Service Unavailable</html>")
        return 0
    if broken_answer == "wrong-rows":
        rows = max(0, rows - 1)
    answer = {"data": {"names": ["t:0", "t:1"], "ndarray": [[0.75, 0.25]] * rows}, "meta": {}}
    print(json.dumps(answer))
    return 0


def pipe(source, sink):
    """Copy bytes one way until either side closes."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def port_forward(args):
    """Listen on 127.0.0.1:LOCAL and forward each connection to FAKE_KUBECTL_FORWARD_TO."""
    local = int(args[2].split(":")[0])
    host, port = os.environ["FAKE_KUBECTL_FORWARD_TO"].rsplit(":", 1)
    listener = socket.create_server(("127.0.0.1", local))
    print(f"Forwarding from 127.0.0.1:{local} -> {port}", flush=True)
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except OSError:
            client.close()
            continue
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=pipe, args=(source, sink), daemon=True).start()


def main():
    args = sys.argv[1:]
    step = step_of(args)
    log = os.environ["FAKE_KUBECTL_LOG"]
    calls = []
    if os.path.exists(log):
        with open(log, encoding="utf-8") as handle:
            calls = [json.loads(line) for line in handle]
    count = 1 + sum(1 for call in calls if call["step"] == step)

    kubeconfig = os.environ.get("KUBECONFIG")
    seen = {"path": kubeconfig}
    if kubeconfig and os.path.exists(kubeconfig):
        seen["mode"] = oct(stat.S_IMODE(os.stat(kubeconfig).st_mode))
        with open(kubeconfig, encoding="utf-8") as handle:
            seen["text"] = handle.read()
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"args": args, "step": step, "kubeconfig": seen}) + "\n")

    for rule in filter(None, os.environ.get("FAKE_KUBECTL_FAIL", "").split(",")):
        name, _, nth = rule.partition(":")
        if name == step and (not nth or int(nth) == count):
            print(f"error: simulated failure of {step}", file=sys.stderr)
            return 1

    if step == "port-forward":
        return port_forward(args)
    if step == "smoke":
        return smoke(args)
    if step == "apply":
        return store(args, with_last_applied=True)
    if step == "create":
        return store(args, with_last_applied=False)
    state = load_state()
    if step == "get":
        live = state.get(key_of(args))
        if live is None and "--ignore-not-found" not in args:
            print("Error from server (NotFound)", file=sys.stderr)
            return 1
        if live is not None:
            print(json.dumps(live))
    elif step == "view-last-applied":
        live = state.get(key_of(args))
        applied = (live or {}).get("metadata", {}).get("annotations", {}).get(LAST_APPLIED)
        if not applied:
            print("error: no last-applied-configuration annotation found", file=sys.stderr)
            return 1
        sys.stdout.write(yaml.safe_dump(json.loads(applied), sort_keys=False))
    elif step == "delete":
        for key, _ in seldon_deployments(args):
            state.pop(key, None)
        save_state(state)
        print("deleted")
    else:
        print(f"{step}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
