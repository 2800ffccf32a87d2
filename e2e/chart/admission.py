"""The chart's ValidatingAdmissionPolicy (templates/node-restriction.yaml) evaluated against sample
admission requests, with cel-python, the way the API server applies it: the binding's policy and
Deny action, the resource rules, matchConditions, variables (in order), then every validation, with
failurePolicy Fail turning an expression error into a denial. Run by check.py on the rendered chart.

cel-python is not cel-go: the policy keeps to what both evaluate alike (no comparisons of an
object with null, which cel-go answers and cel-python refuses).
"""

import copy

import celpy
from celpy import celtypes

NODE_NAME = "authentication.kubernetes.io/node-name"
ENV = celpy.Environment()


class EvalError(Exception):
    pass


def evaluate(expr, activation):
    try:
        result = ENV.program(ENV.compile(expr)).evaluate(activation)
    except (celpy.CELParseError, celpy.CELEvalError) as e:
        raise EvalError(f"{expr!r}: {str(e)[:200]}") from None
    if isinstance(result, celpy.CELEvalError):
        raise EvalError(f"{expr!r}: {str(result)[:200]}")
    return result


def rule_matches(rule, req):
    def has(field, value):
        return "*" in rule.get(field, []) or value in rule.get(field, [])

    res = req["resource"]
    full = res["resource"] + (f"/{req['subResource']}" if req.get("subResource") else "")
    resource_ok = any(
        r == full or r == "*/*"
        or (r == "*" and not req.get("subResource"))
        or (r.endswith("/*") and req.get("subResource") and r[:-2] == res["resource"])
        for r in rule.get("resources", []))
    return (has("operations", req["operation"]) and has("apiGroups", res["group"])
            and has("apiVersions", res["version"]) and resource_ok)


def decide(policy, binding, req, obj, old):
    """("not matched" | "allowed" | "denied" | "error", [messages])"""
    spec = policy["spec"]
    if binding["spec"]["policyName"] != policy["metadata"]["name"]:
        return "not matched", ["the binding names another policy"]
    if not any(rule_matches(r, req) for r in spec["matchConstraints"]["resourceRules"]):
        return "not matched", []
    activation = {
        "request": celpy.json_to_cel(req),
        "object": celpy.json_to_cel(obj),
        "oldObject": celpy.json_to_cel(old),
        "params": None,
        "namespaceObject": None,
    }
    fail_closed = spec.get("failurePolicy", "Fail") == "Fail"
    try:
        for cond in spec.get("matchConditions", []):
            if not evaluate(cond["expression"], activation):
                return "not matched", []
        variables = celtypes.MapType({})
        activation["variables"] = variables
        for var in spec.get("variables", []):
            variables[celtypes.StringType(var["name"])] = evaluate(var["expression"], activation)
        messages = []
        for v in spec["validations"]:
            result = evaluate(v["expression"], activation)
            if not isinstance(result, celtypes.BoolType):
                raise EvalError(f"{v['expression']!r} gave {result!r}, not a bool")
            if not result:
                message = v.get("message") or f"failed expression: {v['expression']}"
                if v.get("messageExpression"):
                    try:
                        message = str(evaluate(v["messageExpression"], activation)) or message
                    except EvalError:
                        pass
                messages.append(message)
    except EvalError as e:
        return ("error" if fail_closed else "allowed"), [str(e)]
    if messages and "Deny" in binding["spec"].get("validationActions", []):
        return "denied", messages
    return "allowed", messages


def pool(name, node=None):
    return {"apiVersion": "thinpool.csi.io/v1alpha1", "kind": "ThinPool",
            "metadata": {"name": name}, "spec": {"nodeName": node or name}}


def request(user, op, name, sub=None, extra=None, resource="thinpools", group="thinpool.csi.io"):
    user_info = {"username": user, "uid": "6d1f-uid", "groups": ["system:authenticated"]}
    if user.startswith("system:serviceaccount:"):
        ns = user.split(":")[2]
        user_info["groups"] = ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"]
    if extra is not None:
        user_info["extra"] = extra
    req = {"uid": "0f3c-req", "operation": op, "name": name, "userInfo": user_info, "dryRun": False,
           "kind": {"group": group, "version": "v1alpha1", "kind": "ThinPool"},
           "resource": {"group": group, "version": "v1alpha1", "resource": resource}}
    if sub:
        req["subResource"] = sub
    return req


def bound_to(node):
    """The user info extras of a ServiceAccount token bound to a pod on `node`."""
    return {NODE_NAME: [node], "authentication.kubernetes.io/node-uid": ["9a7e-node-uid"],
            "authentication.kubernetes.io/pod-name": ["thinpool-csi-node-default-x7k2p"],
            "authentication.kubernetes.io/pod-uid": ["41b2-pod-uid"],
            "authentication.kubernetes.io/credential-id": ["JTI=5c1e"]}


def cases(node_user):
    """(description, request, object, oldObject, expected outcome, text the denial must contain)"""
    own, other = pool("node-a"), pool("node-b")
    a = bound_to("node-a")
    _, _, namespace, account = node_user.split(":")
    controller = f"system:serviceaccount:{namespace}:{account.removesuffix('-node')}-controller"
    elsewhere = f"system:serviceaccount:{namespace}-other:{account}"
    unbound = {"authentication.kubernetes.io/credential-id": ["JTI=77aa"]}
    return [
        ("node-a creates its own ThinPool (first server-side apply)",
         request(node_user, "CREATE", "node-a", extra=a), own, None, "allowed", None),
        ("node-a updates its own ThinPool", request(node_user, "UPDATE", "node-a", extra=a), own, own, "allowed", None),
        ("node-a patches its own ThinPool's status",
         request(node_user, "UPDATE", "node-a", "status", a), own, own, "allowed", None),
        ("node-a deletes its own ThinPool (object null, oldObject set)",
         request(node_user, "DELETE", "node-a", extra=a), None, own, "allowed", None),
        ("node-a patches node-b's ThinPool", request(node_user, "UPDATE", "node-b", extra=a), other, other,
         "denied", "may write only the ThinPool node-a, not node-b"),
        ("node-a patches node-b's ThinPool status", request(node_user, "UPDATE", "node-b", "status", a),
         other, other, "denied", "may write only the ThinPool node-a, not node-b"),
        ("node-a creates node-b's ThinPool", request(node_user, "CREATE", "node-b", extra=a), other, None,
         "denied", "may write only the ThinPool node-a, not node-b"),
        ("node-a deletes node-b's ThinPool", request(node_user, "DELETE", "node-b", extra=a), None, other,
         "denied", "may write only the ThinPool node-a, not node-b"),
        ("node-a names node-b in its own ThinPool's spec.nodeName",
         request(node_user, "UPDATE", "node-a", extra=a), pool("node-a", "node-b"), own,
         "denied", "may not set spec.nodeName to node-b"),
        ("the node ServiceAccount with a token bound to no node",
         request(node_user, "UPDATE", "node-a", extra=unbound), own, own, "denied", "not bound to a pod on a node"),
        ("the node ServiceAccount with a token without any extra (legacy Secret token)",
         request(node_user, "UPDATE", "node-a", "status"), own, own, "denied", "not bound to a pod on a node"),
        ("the node ServiceAccount deleting with a token bound to no node",
         request(node_user, "DELETE", "node-a", extra=unbound), None, own, "denied", "not bound to a pod on a node"),
        ("the controller marks node-b's pool Stale",
         request(controller, "UPDATE", "node-b", "status",
                 bound_to("node-c")), other, other, "not matched", None),
        ("an administrator deletes node-b's ThinPool",
         request("kubernetes-admin", "DELETE", "node-b", extra={}), None, other, "not matched", None),
        ("a ServiceAccount of the same name in another namespace",
         request(elsewhere, "UPDATE", "node-b", extra=a), other, other, "not matched", None),
        ("the node ServiceAccount writing a PersistentVolume",
         request(node_user, "UPDATE", "pv-1", extra=a, resource="persistentvolumes", group=""),
         {"metadata": {"name": "pv-1"}}, {"metadata": {"name": "pv-1"}}, "not matched", None),
    ]


def run_cases(policy, binding, node_user):
    """Failures (strings) of every sample request against the policy; [] when all behave."""
    failures = []
    for what, req, obj, old, want, text in cases(node_user):
        got, messages = decide(policy, binding, req, obj, old)
        if got != want or (text and not any(text in m for m in messages)):
            failures.append(f"{what}: expected {want}{f' saying {text!r}' if text else ''}, got {got}: {messages}")
    return failures


def check(docs):
    """Failures of the rendered chart's policy: the sample requests, and that they notice a policy
    whose validations are gone (so they can fail)."""
    policies = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    bindings = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"]
    users = [f"system:serviceaccount:{d['metadata']['namespace']}:{d['metadata']['name']}" for d in docs
             if d["kind"] == "ServiceAccount"
             and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "node"]
    if len(policies) != 1 or len(bindings) != 1 or len(users) != 1:
        return [f"expected one policy, one binding and one node ServiceAccount, got "
                f"{len(policies)}, {len(bindings)}, {len(users)}"], 0
    policy, binding = policies[0], bindings[0]
    failures = run_cases(policy, binding, users[0])
    if binding["spec"].get("validationActions") != ["Deny"] or policy["spec"].get("failurePolicy") != "Fail":
        failures.append("the binding must use validationActions [Deny] and the policy failurePolicy Fail")
    toothless = copy.deepcopy(policy)
    toothless["spec"]["validations"] = []
    if not run_cases(toothless, binding, users[0]):
        failures.append("the sample requests pass even against a policy without validations")
    return failures, len(cases(users[0]))
