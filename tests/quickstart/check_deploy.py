#!/usr/bin/env python3
"""Checks the deploy files against the code and lints them.

usage: check_deploy.py RWKVD SOURCE_ROOT

Always:
  * every environment variable the sources read (string literals RWKVD_* and
    OPENBLAS_CORETYPE in core/, adapters/, server/) and every one that
    `rwkvd serve --help` lists is documented in deploy/ENVIRONMENT.md and
    present in deploy/env.example;
  * the defaults printed by `rwkvd serve` at start-up match env.example;
  * the Dockerfile's build stage installs exactly the packages of
    scripts/deps.sh;
  * deploy/compose.yaml is valid YAML with one service `rwkvd`.
When the tool is there:
  * `systemd-analyze verify` on deploy/rwkvd.service (ExecStart pointed at the
    built binary);
  * `dockerfile-utils lint` on the Dockerfile and `dclint` on the compose file,
    from tests/quickstart/node_modules (npm install in tests/quickstart).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}")


def note(msg):
    print(f"ok: {msg}")


def read(root, *parts):
    with open(os.path.join(root, *parts), encoding="utf-8") as f:
        return f.read()


def check_env(rwkvd, root):
    names = set()
    for layer in ("core", "adapters", "server"):
        for dirpath, _, files in os.walk(os.path.join(root, layer)):
            for fn in files:
                if fn.endswith((".c", ".h")):
                    with open(os.path.join(dirpath, fn), encoding="utf-8") as f:
                        names.update(re.findall(r'"((?:RWKVD|OPENBLAS)_[A-Z0-9_]+)"', f.read()))
    helptext = subprocess.run([rwkvd, "serve", "--help"], capture_output=True, text=True).stdout
    names.update(re.findall(r"\(env (RWKVD_[A-Z0-9_]+)\)", helptext))
    names.discard("OPENBLAS_NUM_THREADS")
    doc = read(root, "deploy", "ENVIRONMENT.md")
    example = read(root, "deploy", "env.example")
    for n in sorted(names):
        if f"`{n}`" not in doc:
            fail(f"{n} is read by rwkvd but missing from deploy/ENVIRONMENT.md")
        if not re.search(rf"^#?{n}=", example, re.M):
            fail(f"{n} is read by rwkvd but missing from deploy/env.example")
    note(f"{len(names)} environment variables documented")

    # Defaults: `rwkvd serve --print-config` prints the configuration and exits.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RWKVD_")}
    p = subprocess.run([rwkvd, "serve", "--print-config"], env=env, capture_output=True,
                       text=True)
    printed = dict(re.findall(r"^  ([a-z0-9-]+) +(.*)$", p.stdout, re.M))
    if not printed:
        fail("rwkvd serve --print-config printed no configuration")
        return
    sizes = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    n_fail = len(failures)
    for flag, val in printed.items():
        var = "RWKVD_" + flag.upper().replace("-", "_")
        m = re.search(rf"^#?{var}=(.*)$", example, re.M)
        if not m or not m.group(1) or val == "(unset)" or flag in ("model", "data-dir"):
            continue
        ex = m.group(1).strip()
        if ex[-1:] in sizes and ex[:-1].isdigit():
            ex = str(int(ex[:-1]) * sizes[ex[-1]])
        if ex in ("1", "true") and val == "true" or ex in ("0", "false") and val == "false":
            continue
        if ex != val:
            fail(f"env.example says {var}={m.group(1)} but rwkvd's default is {val}")
    if len(failures) == n_fail:
        note("env.example defaults match rwkvd serve")


def check_dockerfile(root):
    deps = read(root, "scripts", "deps.sh")
    m = re.search(r'PKGS="([^"]*)"', deps)
    want = set(m.group(1).split()) if m else set()
    df = read(root, "Dockerfile")
    build = df.split("FROM debian:12-slim")[0]
    m = re.search(r"apt-get install[^\\]*\\\n(.*?)&&", build, re.S)
    got = set(m.group(1).replace("\\", " ").split()) if m else set()
    if not want or want != got:
        fail(f"Dockerfile build packages differ from scripts/deps.sh: "
             f"missing {sorted(want - got)}, extra {sorted(got - want)}")
    else:
        note("Dockerfile build stage installs the packages of scripts/deps.sh")


def check_compose(root):
    path = os.path.join(root, "deploy", "compose.yaml")
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        try:
            doc = yaml.safe_load(read(root, "deploy", "compose.yaml"))
        except yaml.YAMLError as e:
            fail(f"deploy/compose.yaml is not valid YAML: {e}")
            return
        svc = (doc or {}).get("services", {}).get("rwkvd")
        if not svc or "healthcheck" not in svc:
            fail("deploy/compose.yaml has no service rwkvd with a healthcheck")
        else:
            note("compose.yaml parses (PyYAML)")
    else:
        node = shutil.which("node")
        jsyaml = os.path.join(root, "tests", "quickstart", "node_modules", "js-yaml")
        if node and os.path.isdir(jsyaml):
            js = ("const y=require(process.argv[1]);const d=y.load(require('fs').readFileSync("
                  "process.argv[2],'utf8'));if(!d.services||!d.services.rwkvd)process.exit(1)")
            p = subprocess.run([node, "-e", js, jsyaml, path], capture_output=True, text=True)
            if p.returncode:
                fail(f"deploy/compose.yaml does not parse: {p.stderr.strip()}")
            else:
                note("compose.yaml parses (js-yaml)")
        else:
            print("SKIP part compose.yaml parse: no YAML parser (python3-yaml, or js-yaml from "
                  "npm ci --prefix tests/quickstart)")


def check_key_file(root):
    """The README, compose.yaml and .dockerignore agree on deploy/api-keys."""
    readme = read(root, "README.md")
    compose = read(root, "deploy", "compose.yaml")
    ignore = read(root, ".dockerignore").split()
    if "> deploy/api-keys" not in readme or '"$PWD/deploy/api-keys:' not in readme:
        fail("README.md must create and mount deploy/api-keys (the file compose.yaml reads)")
    if not re.search(r"^\s*file: \./api-keys\s*$", compose, re.M):
        fail("deploy/compose.yaml must read its key secret from ./api-keys (deploy/api-keys)")
    for name in ["api-keys", "deploy/api-keys"]:
        if name not in ignore:
            fail(f".dockerignore must list {name} (an API key file must not enter an image)")
    note("README, compose.yaml and .dockerignore agree on deploy/api-keys")


def check_systemd(rwkvd, root):
    exe = shutil.which("systemd-analyze")
    if not exe:
        print("SKIP part systemd unit: systemd-analyze is not installed")
        return
    unit = read(root, "deploy", "rwkvd.service").replace("/usr/local/bin/rwkvd", rwkvd)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "rwkvd.service")
        with open(path, "w") as f:
            f.write(unit)
        p = subprocess.run([exe, "verify", path], capture_output=True, text=True)
        out = (p.stdout + p.stderr).strip()
        # verify also reports problems of unrelated units on the host; keep ours
        ours = [ln for ln in out.splitlines() if "rwkvd.service" in ln]
        if p.returncode != 0 and ours:
            fail("systemd-analyze verify: " + "\n".join(ours))
        else:
            note("systemd-analyze verify deploy/rwkvd.service")


def check_linters(root):
    bin_dir = os.path.join(root, "tests", "quickstart", "node_modules", ".bin")
    lints = [("dockerfile-utils", ["lint", os.path.join(root, "Dockerfile")]),
             ("dclint", [os.path.join(root, "deploy", "compose.yaml")])]
    for tool, args in lints:
        exe = os.path.join(bin_dir, tool)
        if not os.path.exists(exe):
            print(f"SKIP part {tool}: not installed (./scripts/test.sh installs it with node: "
                  "npm ci --prefix tests/quickstart)")
            continue
        p = subprocess.run([exe] + args, capture_output=True, text=True, cwd=root)
        out = (p.stdout + p.stderr).strip()
        if p.returncode != 0 or re.search(r"\b(error|warning)\b", out, re.I):
            fail(f"{tool} reports:\n{out}")
        else:
            note(f"{tool} finds nothing")


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    rwkvd, root = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    check_env(rwkvd, root)
    check_dockerfile(root)
    check_compose(root)
    check_key_file(root)
    check_systemd(rwkvd, root)
    check_linters(root)
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
