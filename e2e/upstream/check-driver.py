#!/usr/bin/env python3
"""Checks e2e/upstream/test-driver.yaml against the e2e suite it is read by.

    check-driver.py DRIVER_FILE KUBERNETES_MODULE_DIR

The suite decodes the driver file into Go structs and ignores unknown keys silently, and a
capability it does not know is just another map key: a misspelt or wrongly cased key turns a
capability off without a word (the listing of specs does not change: every spec is listed and the
unclaimed ones skip at run time). So every key is checked against the Go source of the module the
suite was built from (test/e2e/storage/external/external.go, framework/testdriver.go, the
volume and timeout types): field names, capability names, timeout names, each exactly as spelt
there. Prints each unknown key with its line and exits 1 when there is one.
"""
import re
import sys
from pathlib import Path


def struct_fields(src, name):
    """Field names of `type NAME struct {...}` in SRC: {field: {inline struct's fields} or None}."""
    m = re.search(rf"^type {re.escape(name)} struct {{\n", src, re.M)
    if not m:
        raise SystemExit(f"check-driver: no struct {name} in the suite's source (a new Kubernetes?)")
    fields, depth, inner, current = {}, 1, None, None
    for line in src[m.end():].splitlines():
        code = line.split("//", 1)[0].rstrip()
        stripped = code.strip()
        if depth == 1 and re.match(r"^[A-Z]\w*\s", stripped):
            current = stripped.split()[0]
            fields[current] = None
            if stripped.endswith("struct {"):
                fields[current], inner = {}, current
        elif depth == 2 and inner and re.match(r"^[A-Z]\w*\s", stripped):
            fields[inner][stripped.split()[0]] = None
        depth += code.count("{") - code.count("}")
        if depth == 1:
            inner = None
        if depth == 0:
            return fields
    raise SystemExit(f"check-driver: struct {name} does not end")


def yaml_keys(text):
    """(line, path) of every mapping key in a plain block-style YAML file (no flow, no anchors)."""
    stack, out = [], []
    for n, line in enumerate(text.splitlines(), 1):
        body = re.sub(r"\s+#.*$", "", line) if not line.lstrip().startswith("#") else ""
        if not body.strip() or body.lstrip().startswith("- "):
            continue
        indent = len(body) - len(body.lstrip())
        m = re.match(r'\s*("?)([^":]*)\1:(\s|$)', body)
        if not m:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        out.append((n, [k for _, k in stack]))
    return out


def main(argv):
    if len(argv) != 3:
        print("usage: check-driver.py DRIVER_FILE KUBERNETES_MODULE_DIR", file=sys.stderr)
        return 2
    driver_file, k8s = Path(argv[1]), Path(argv[2]) / "test/e2e"
    read = lambda p: (k8s / p).read_text()
    top = struct_fields(read("storage/external/external.go"), "driverDefinition")
    info = struct_fields(read("storage/framework/testdriver.go"), "DriverInfo")
    size_range = struct_fields(read("framework/volume/fixtures.go"), "SizeRange")
    timeouts = struct_fields(read("framework/timeouts.go"), "TimeoutContext")
    capabilities = set(re.findall(r'\bCapability\s*=\s*"([^"]+)"', read("storage/framework/testdriver.go")))
    known = {
        (): set(top),
        ("DriverInfo",): set(info),
        ("DriverInfo", "SupportedSizeRange"): set(size_range),
        ("DriverInfo", "Capabilities"): capabilities,
        ("Timeouts",): set(timeouts),
    }
    for field, inner in top.items():
        if inner:
            known[(field,)] = set(inner)
    # Maps whose keys are values, not names: file systems, mount options.
    free = {("DriverInfo", "SupportedFsType"), ("DriverInfo", "SupportedMountOption"),
            ("DriverInfo", "RequiredMountOption")}
    bad = []
    for line, path in yaml_keys(driver_file.read_text()):
        parent, key = tuple(path[:-1]), path[-1]
        if parent in free or any(tuple(path[:i]) in free for i in range(len(path))):
            continue
        allowed = known.get(parent)
        if allowed is None:
            bad.append(f"{driver_file}:{line}: {'.'.join(path)}: {'.'.join(parent)} takes no keys")
        elif key not in allowed:
            near = [a for a in sorted(allowed) if a.lower() == key.lower()]
            hint = f" (did you mean {near[0]}?)" if near else f" (known: {', '.join(sorted(allowed))})"
            bad.append(f"{driver_file}:{line}: {'.'.join(path)}: not a key the suite reads{hint}")
    for b in bad:
        print(b)
    print(f"check-driver: {len(yaml_keys(driver_file.read_text()))} keys, {len(bad)} unknown")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
