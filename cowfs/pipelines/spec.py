"""Pipeline specs: parsing YAML or JSON, and validating it into frozen dataclasses.

Validation collects every problem, each with the field path that has it (`input.cross[1].pfs.glob:
…`), so one `pipeline create` tells the user everything that is wrong at once rather than one
error per attempt. Field names follow Pachyderm's where they fit.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Union

import yaml

from cowfs.errors import UsageError
from cowfs.names import NAME_RULE, check_name
from cowfs.pipelines import globs

DEFAULT_BRANCH = "main"
DEFAULT_TRIES = 3
_INPUT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}")
_COMBOS = ("cross", "union", "join", "group")
_TOP_FIELDS = (
    "pipeline",
    "description",
    "input",
    "transform",
    "parallelism",
    "parallelism_spec",
    "datum_tries",
    "datum_timeout",
    "datum_batching",
    "resources",
    "resource_requests",
    "output_branch",
    "runner",
)
_PFS_FIELDS = ("repo", "branch", "glob", "name", "join_on", "group_by", "outer_join")
_TRANSFORM_FIELDS = ("cmd", "stdin", "env", "image")
_RESOURCE_FIELDS = ("cpu", "memory", "gpu")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_IUNITS = {"ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
#: The variable of the output directory, which no input's variable may shadow.
OUT_ENV = "PFS_OUT"


class SpecError(UsageError):
    """A spec that cannot run; the message lists every problem found."""

    def __init__(self, problems: list[str], name: str = "") -> None:
        self.problems = problems
        head = f"pipeline spec {name + ' ' if name else ''}is invalid"
        super().__init__(head + ":\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class PfsInput:
    name: str
    repo: str
    branch: str = DEFAULT_BRANCH
    glob: str = "/*"
    join_on: str | None = None
    group_by: str | None = None
    outer_join: bool = False
    #: A cron input (`{cron: {name, spec}}`): the schedule. Its repo is `<pipeline>_<name>`,
    #: written by the daemon at each tick, read with glob `/`.
    cron: str | None = None
    overwrite: bool = False  # cron: each tick replaces the file `time`, rather than adding one


@dataclass(frozen=True)
class Combo:
    kind: str  # one of _COMBOS
    inputs: tuple[InputNode, ...]


InputNode = Union[PfsInput, Combo]  # noqa: UP007 - a runtime alias, needs Union on 3.10


@dataclass(frozen=True)
class Transform:
    cmd: tuple[str, ...]
    stdin: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    image: str | None = None

    def identity(self) -> dict[str, Any]:
        """What a datum's hash covers: change any of it and every datum runs again."""
        return {
            "cmd": list(self.cmd),
            "stdin": list(self.stdin),
            "env": dict(self.env),
            "image": self.image,
        }


@dataclass(frozen=True)
class Resources:
    cpu: float | None = None
    memory: int | None = None
    gpu: int | None = None


@dataclass(frozen=True)
class RunnerSpec:
    """Where a pipeline's datums run: `local` (this machine) or `ray` (a Ray cluster)."""

    kind: str = "local"
    address: str | None = None  # ray: "auto", "HOST:PORT", "ray://HOST:10001", or "local"
    batch_size: int | None = None  # ray: datums per task; None: chosen per job

    def to_dict(self) -> Any:
        if self.kind == "local":
            return "local"
        opts = {"address": self.address, "batch_size": self.batch_size}
        return {"ray": {k: v for k, v in opts.items() if v is not None}}


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    input: InputNode
    transform: Transform
    description: str = ""
    parallelism: int = 1
    datum_tries: int = DEFAULT_TRIES
    datum_timeout: float | None = None
    datum_batching: bool = False
    resources: Resources = field(default_factory=Resources)
    output_branch: str = DEFAULT_BRANCH
    runner: RunnerSpec | None = None

    def pfs_inputs(self) -> list[PfsInput]:
        return list(iter_pfs(self.input))

    def to_dict(self) -> dict[str, Any]:
        """The canonical form stored in the lake and shown by `pipeline inspect`."""
        out: dict[str, Any] = {
            "pipeline": self.name,
            "input": input_to_dict(self.input),
            "transform": {k: v for k, v in self.transform.identity().items() if v},
            "parallelism": self.parallelism,
            "datum_tries": self.datum_tries,
            "datum_batching": self.datum_batching,
            "output_branch": self.output_branch,
        }
        if self.description:
            out["description"] = self.description
        if self.datum_timeout is not None:
            out["datum_timeout"] = self.datum_timeout
        res = {k: v for k, v in vars(self.resources).items() if v is not None}
        if res:
            out["resources"] = res
        if self.runner is not None:
            out["runner"] = self.runner.to_dict()
        return out


def env_name(input_name: str) -> str:
    """The variable naming an input's directory. Several names map to one variable (`a-b`,
    `a_b`; `Out` to `PFS_OUT`), so validation rejects specs where two would collide."""
    return "PFS_" + re.sub(r"[^A-Za-z0-9]", "_", input_name).upper()


def iter_pfs(node: InputNode):
    if isinstance(node, PfsInput):
        yield node
    else:
        for child in node.inputs:
            yield from iter_pfs(child)


def _pfs_paths(node: InputNode, where: str) -> list[tuple[str, PfsInput]]:
    """Each pfs input with its field path, so a problem between two inputs can name both."""
    if isinstance(node, PfsInput):
        return [(f"{where}.pfs", node)]
    out = []
    for i, child in enumerate(node.inputs):
        out += _pfs_paths(child, f"{where}.{node.kind}[{i}]")
    return out


def input_to_dict(node: InputNode) -> dict[str, Any]:
    if isinstance(node, PfsInput) and node.cron is not None:
        c: dict[str, Any] = {"name": node.name, "spec": node.cron}
        if node.overwrite:
            c["overwrite"] = True
        return {"cron": c}
    if isinstance(node, PfsInput):
        d: dict[str, Any] = {
            "repo": node.repo,
            "branch": node.branch,
            "glob": node.glob,
            "name": node.name,
        }
        if node.join_on is not None:
            d["join_on"] = node.join_on
        if node.group_by is not None:
            d["group_by"] = node.group_by
        if node.outer_join:
            d["outer_join"] = True
        return {"pfs": d}
    return {node.kind: [input_to_dict(c) for c in node.inputs]}


# --- loading ---------------------------------------------------------------------------------


def load_text(text: str, source: str = "spec") -> dict[str, Any]:
    """YAML or JSON text to a mapping, with the parser's own line and column on errors."""
    try:
        data = json.loads(text) if source.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise SpecError([f"{source} does not parse: {e}"]) from None
    if not isinstance(data, dict):
        raise SpecError([f"{source}: a spec is a mapping with pipeline, input and transform"])
    return data


def parse(data: dict[str, Any]) -> PipelineSpec:
    """Validate a spec mapping; raises `SpecError` listing every problem."""
    p = _Problems()
    p.unknown(data, _TOP_FIELDS, "")
    name = _pipeline_name(data.get("pipeline"), p)
    description = data.get("description", "")
    if not isinstance(description, str):
        p.add("description", "must be a string")
        description = ""
    node: InputNode | None = None
    if "input" not in data:
        p.add("input", "is required, e.g. {pfs: {repo: images, glob: '/*'}}")
    else:
        node = _input(data["input"], "input", None, p, name or "")
    transform = _transform(data.get("transform"), p)
    parallelism = data.get("parallelism", 1)
    if "parallelism_spec" in data:
        ps = data["parallelism_spec"]
        parallelism = ps.get("constant") if isinstance(ps, dict) else None
        if parallelism is None:
            p.add("parallelism_spec", "only {constant: N} is supported")
            parallelism = 1
    parallelism = p.int_at_least(parallelism, 1, "parallelism")
    tries = p.int_at_least(data.get("datum_tries", DEFAULT_TRIES), 1, "datum_tries")
    timeout = _duration(data.get("datum_timeout"), p)
    batching = data.get("datum_batching", False)
    if not isinstance(batching, bool):
        p.add("datum_batching", "must be true or false")
        batching = False
    if batching and transform is not None and transform.stdin:
        p.add(
            "transform.stdin",
            "cannot be used with datum_batching: true, which feeds datums on stdin: put the "
            "code in transform.cmd (e.g. [python3, -c, ...])",
        )
    resources = _resources(data.get("resources", data.get("resource_requests")), p)
    runner = _runner(data.get("runner"), p)
    out_branch = data.get("output_branch", DEFAULT_BRANCH)
    if not isinstance(out_branch, str) or not _valid_name(out_branch):
        p.add("output_branch", f"must be a branch name: {NAME_RULE}")
    if node is not None:
        names = [i.name for i in iter_pfs(node)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        for d in dupes:
            p.add("input", f"two inputs are named {d!r}: give each a distinct `name`")
        seen: dict[str, tuple[str, str]] = {}
        for where, inp in _pfs_paths(node, "input"):
            var = env_name(inp.name)
            if var == OUT_ENV:
                p.add(
                    f"{where}.name",
                    f"input name {inp.name!r} would set ${OUT_ENV}, the output directory's "
                    "variable: choose another name",
                )
                continue
            first = seen.setdefault(var, (where, inp.name))
            if first[1] != inp.name:  # equal names are reported above as duplicates
                p.add(
                    f"{where}.name",
                    f"inputs {first[1]!r} ({first[0]}) and {inp.name!r} would both set ${var}: "
                    "rename one",
                )
        if name and any(i.repo == name for i in iter_pfs(node)):
            p.add("input", f"pipeline {name} cannot read its own output repo {name}")
    if p.problems or node is None or transform is None or name is None:
        raise SpecError(p.problems, name or "")
    return PipelineSpec(
        name=name,
        input=node,
        transform=transform,
        description=description,
        parallelism=parallelism,
        datum_tries=tries,
        datum_timeout=timeout,
        datum_batching=batching,
        resources=resources,
        output_branch=out_branch,
        runner=runner,
    )


def parse_text(text: str, source: str = "spec") -> PipelineSpec:
    return parse(load_text(text, source))


# --- field validators --------------------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}" if where else what)

    def unknown(self, data: dict, known: tuple[str, ...], where: str) -> None:
        for key in data:
            if key not in known:
                hint = difflib.get_close_matches(str(key), known, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(known)}"
                self.add(_join(where, str(key)), f"unknown field{extra}")

    def int_at_least(self, value: Any, low: int, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            self.add(where, f"must be an integer >= {low}, got {value!r}")
            return low
        return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except UsageError:
        return False
    return True


def _pipeline_name(raw: Any, p: _Problems) -> str | None:
    if isinstance(raw, dict):
        raw = raw.get("name")
    if raw is None:
        p.add("pipeline", "is required: the pipeline's name, which also names its output repo")
        return None
    if not isinstance(raw, str) or not _valid_name(raw):
        p.add("pipeline", f"invalid name {raw!r}: use {NAME_RULE}")
        return None
    return raw


def _input(
    raw: Any, where: str, parent: str | None, p: _Problems, pipeline: str
) -> InputNode | None:
    if not isinstance(raw, dict):
        p.add(where, "must be a mapping with one of pfs, cron, cross, union, join, group")
        return None
    kinds = [k for k in ("pfs", "cron", *_COMBOS) if k in raw]
    p.unknown(raw, ("pfs", "cron", *_COMBOS), where)
    if len(kinds) != 1:
        p.add(
            where,
            f"needs exactly one of pfs, cron, cross, union, join, group; got {kinds or 'none'}",
        )
        return None
    kind = kinds[0]
    if kind == "pfs":
        return _pfs(raw["pfs"], f"{where}.pfs", parent, p)
    if kind == "cron":
        return _cron(raw["cron"], f"{where}.cron", p, pipeline)
    items = raw[kind]
    if not isinstance(items, list) or not items:
        p.add(f"{where}.{kind}", "must be a non-empty list of inputs")
        return None
    children = []
    for i, item in enumerate(items):
        w = f"{where}.{kind}[{i}]"
        if kind in ("join", "group") and not (isinstance(item, dict) and "pfs" in item):
            p.add(w, f"every input of a {kind} must be a pfs input")
            continue
        child = _input(item, w, kind, p, pipeline)
        if child is not None:
            children.append(child)
    if len(children) != len(items):
        return None
    return Combo(kind, tuple(children))


def _pfs(raw: Any, where: str, parent: str | None, p: _Problems) -> PfsInput | None:
    if not isinstance(raw, dict):
        p.add(where, "must be a mapping with repo and glob")
        return None
    p.unknown(raw, _PFS_FIELDS, where)
    ok = True
    repo = raw.get("repo")
    if not isinstance(repo, str) or not _valid_name(repo):
        p.add(f"{where}.repo", f"is required and must be a repo name ({NAME_RULE}), got {repo!r}")
        ok = False
    branch = raw.get("branch", DEFAULT_BRANCH)
    if not isinstance(branch, str) or not _valid_name(branch):
        p.add(f"{where}.branch", f"invalid branch name {branch!r}")
        ok = False
    glob = raw.get("glob")
    groups = 0
    if not isinstance(glob, str):
        p.add(f"{where}.glob", "is required, e.g. '/*' (one datum per top-level entry) or '/'")
        ok = False
    elif not glob.startswith("/"):
        p.add(f"{where}.glob", f"must start with '/', got {glob!r}")
        ok = False
    else:
        try:
            groups = globs.capture_count(glob)
        except globs.GlobError as e:
            p.add(f"{where}.glob", str(e))
            ok = False
    name = raw.get("name", repo)
    if not isinstance(name, str) or not _INPUT_NAME.fullmatch(name) or name == "out":
        p.add(
            f"{where}.name",
            f"invalid input name {name!r}: letters, digits, '_' and '-', not 'out'",
        )
        ok = False
    join_on = raw.get("join_on")
    group_by = raw.get("group_by")
    outer = raw.get("outer_join", False)
    for fname, value, needs in (("join_on", join_on, "join"), ("group_by", group_by, "group")):
        if value is None:
            if parent == needs:
                p.add(f"{where}.{fname}", f"is required in a {needs}, e.g. '$1'")
                ok = False
            continue
        if parent != needs:
            p.add(f"{where}.{fname}", f"only means something inside a {needs} input")
            ok = False
        elif not isinstance(value, str) or not globs.template_refs(value):
            p.add(
                f"{where}.{fname}",
                f"must name capture groups of the glob, e.g. '$1', got {value!r}",
            )
            ok = False
        elif groups and max(globs.template_refs(value)) > groups:
            p.add(
                f"{where}.{fname}",
                f"{value!r} names a group the glob does not have ({groups} capture group(s) "
                f"in {glob!r}; put the part to match in parentheses)",
            )
            ok = False
        elif not groups and isinstance(glob, str):
            p.add(f"{where}.{fname}", f"the glob {glob!r} has no capture groups: e.g. '/(*).csv'")
            ok = False
    if not isinstance(outer, bool):
        p.add(f"{where}.outer_join", "must be true or false")
        ok = False
    elif outer and parent != "join":
        p.add(f"{where}.outer_join", "only means something inside a join input")
        ok = False
    if not ok:
        return None
    return PfsInput(name, repo, branch, glob, join_on, group_by, outer)


def _transform(raw: Any, p: _Problems) -> Transform | None:
    if not isinstance(raw, dict):
        p.add("transform", "is required: a mapping with cmd (a list), optional stdin, env, image")
        return None
    p.unknown(raw, _TRANSFORM_FIELDS, "transform")
    cmd = raw.get("cmd")
    ok = True
    if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
        p.add("transform.cmd", f"must be a non-empty list of strings, e.g. [sh], got {cmd!r}")
        ok = False
    stdin = raw.get("stdin", [])
    if isinstance(stdin, str):
        stdin = stdin.splitlines()
    if not isinstance(stdin, list) or not all(isinstance(s, str) for s in stdin):
        p.add("transform.stdin", "must be a list of lines (strings) or one string")
        ok = False
    env = raw.get("env", {}) or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, (str, int, float)) and not isinstance(v, bool)
        for k, v in env.items()
    ):
        p.add("transform.env", "must map names to strings")
        ok = False
    image = raw.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        p.add("transform.image", "must be an image name such as python:3.12-slim")
        ok = False
    if not ok:
        return None
    return Transform(
        tuple(cmd),
        tuple(stdin),
        tuple(sorted((k, str(v)) for k, v in env.items())),
        image,
    )


def parse_duration(text: str) -> float | None:
    """`"1m30s"`, `"500ms"`, `"2h"`: seconds, or None when it is not such a duration."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        mult = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        total = sum(float(n) * mult[u] for n, u in parts)
        if total > 0:
            return total
    return None


def _duration(raw: Any, p: _Problems) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw > 0:
        return float(raw)
    if isinstance(raw, str) and parse_duration(raw) is not None:
        return parse_duration(raw)
    p.add("datum_timeout", f"must be seconds or a duration like '30s', '5m', '1h', got {raw!r}")
    return None


def parse_bytes(raw: Any) -> int | None:
    """`512M`, `2Gi`, `1.5G` or a plain number of bytes, as Kubernetes users write them."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return raw
    if not isinstance(raw, str):
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", raw.lower())
    if not m:
        return None
    unit = m.group(2) or ""
    mult = _IUNITS.get(unit) or _UNITS.get(unit)
    return int(float(m.group(1)) * mult) if mult else None


def _resources(raw: Any, p: _Problems) -> Resources:
    if raw is None:
        return Resources()
    if not isinstance(raw, dict):
        p.add("resources", "must be a mapping with cpu, memory, gpu")
        return Resources()
    p.unknown(raw, _RESOURCE_FIELDS, "resources")
    cpu = raw.get("cpu")
    if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu <= 0):
        p.add("resources.cpu", f"must be a positive number of cores, got {cpu!r}")
        cpu = None
    memory = None
    if raw.get("memory") is not None:
        memory = parse_bytes(raw["memory"])
        if memory is None:
            p.add("resources.memory", f"must be a size like '512M' or '2Gi', got {raw['memory']!r}")
    gpu = raw.get("gpu")
    if isinstance(gpu, dict):
        gpu = gpu.get("number")
    if gpu is not None and (isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0):
        p.add("resources.gpu", f"must be a number of GPUs, got {raw.get('gpu')!r}")
        gpu = None
    return Resources(float(cpu) if cpu is not None else None, memory, gpu)


def _runner(raw: Any, p: _Problems) -> RunnerSpec | None:
    if raw is None:
        return None
    if raw == "local" or raw == {"local": {}} or raw == {"local": None}:
        return RunnerSpec("local")
    if raw == "ray":
        return RunnerSpec("ray", "auto")
    if not isinstance(raw, dict) or list(raw) != ["ray"]:
        p.add("runner", f"must be 'local' or {{ray: {{address: ...}}}}, got {raw!r}")
        return None
    opts = raw["ray"] or {}
    if not isinstance(opts, dict):
        p.add("runner.ray", "must be a mapping with address and batch_size")
        return None
    p.unknown(opts, ("address", "batch_size"), "runner.ray")
    address = opts.get("address", "auto")
    if not isinstance(address, str) or not address.strip():
        p.add(
            "runner.ray.address",
            f"must be 'auto', 'local', HOST:PORT or ray://HOST:PORT, got {address!r}",
        )
        address = "auto"
    batch = opts.get("batch_size")
    if batch is not None:
        batch = p.int_at_least(batch, 1, "runner.ray.batch_size")
    return RunnerSpec("ray", address.strip(), batch)


def _cron(raw: Any, where: str, p: _Problems, pipeline: str) -> PfsInput | None:
    from cowfs.pipelines.cron import CronError, Schedule

    if not isinstance(raw, dict):
        p.add(where, "must be a mapping with name and spec, e.g. {name: tick, spec: '@every 1m'}")
        return None
    p.unknown(raw, ("name", "spec", "overwrite"), where)
    ok = True
    name = raw.get("name")
    if not isinstance(name, str) or not _INPUT_NAME.fullmatch(name) or name == "out":
        p.add(
            f"{where}.name", f"is required: letters, digits, '_' and '-', not 'out'; got {name!r}"
        )
        ok = False
    sched = raw.get("spec")
    if not isinstance(sched, str):
        p.add(f"{where}.spec", "is required: a cron expression ('*/10 * * * *') or '@every 30s'")
        ok = False
    else:
        try:
            Schedule.parse(sched)
        except CronError as e:
            p.add(f"{where}.spec", str(e))
            ok = False
    overwrite = raw.get("overwrite", False)
    if not isinstance(overwrite, bool):
        p.add(f"{where}.overwrite", "must be true or false")
        ok = False
    repo = f"{pipeline}_{name}"
    if ok and not _valid_name(repo):
        p.add(f"{where}.name", f"makes the repo name {repo!r}, which is not valid: {NAME_RULE}")
        ok = False
    if not ok:
        return None
    return PfsInput(name, repo, DEFAULT_BRANCH, "/", cron=sched.strip(), overwrite=overwrite)
