"""Deployment files: environment.yml pins, Dockerfile, Apptainer definition, containerised runs.

Base images and conda channels cannot be reached here, so the builds
themselves are not run; what can be checked without them is: the pins agree
with pyproject.toml, the definition files parse (valid instructions and
sections, sources that exist, build arguments that are defined), and a
Snakemake dry run with ``--software-deployment-method apptainer`` plans every
job without pulling or running an image.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

#: Dockerfile instructions (Docker's reference).
DOCKER_KEYWORDS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER",
}  # fmt: skip
#: Apptainer definition file sections and header keywords.
APPTAINER_SECTIONS = {
    "setup", "files", "environment", "post", "runscript", "startscript", "test", "labels",
    "help", "arguments", "app", "apprun", "applabels", "appinstall", "appenv", "apphelp",
    "appfiles", "apptest",
}  # fmt: skip
APPTAINER_HEADER = {"Bootstrap", "From", "Stage", "Registry", "Namespace", "Include", "MirrorURL"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(req: Requirement) -> str:
    return re.sub(r"[-_.]+", "-", req.name).lower()


def _torch_pin() -> str:
    deps = [Requirement(d) for d in _pyproject()["project"]["dependencies"]]
    return next(str(r.specifier) for r in deps if r.name == "torch").lstrip("=")


def test_environment_yml_pins_what_pyproject_pins():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *extras["workflow"], *extras["distributed"]]
    wanted += extras["notebook"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    entries = []
    for dep in env["dependencies"]:
        entries += dep["pip"] if isinstance(dep, dict) else [dep]
    pinned = {}
    for entry in entries:
        if entry.startswith("-e ") or re.match(r"^(python|pip)\b", entry):
            continue
        req = Requirement(entry)
        pinned[_name(req)] = str(req.specifier)
    expected = {_name(Requirement(d)): str(Requirement(d).specifier) for d in wanted}
    assert pinned == expected
    assert "-e .[workflow,distributed]" in entries
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python.split("=")[1] >= project["requires-python"].lstrip(">=")


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    logical, parts = [], []
    for line in text.splitlines():
        if not parts and (not line.strip() or line.lstrip().startswith("#")):
            continue
        parts.append(line.rstrip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            keyword, _, rest = " ".join(parts).strip().partition(" ")
            logical.append((keyword, rest))
            parts = []
    assert not parts, "a continued instruction runs off the end of the Dockerfile"
    return logical


def test_dockerfile_parses_and_builds_both_variants_from_existing_sources():
    instructions = _dockerfile_instructions((ROOT / "Dockerfile").read_text())
    keywords = [k for k, _ in instructions]
    assert set(keywords) <= DOCKER_KEYWORDS, set(keywords) - DOCKER_KEYWORDS
    assert keywords[keywords.index("FROM") - 1] == "ARG" and keywords.count("FROM") == 1
    args = {r.split("=")[0] for k, r in instructions if k == "ARG"}
    used = set()
    for _, rest in instructions:
        used |= set(re.findall(r"\$\{?([A-Z_]+)\}?", rest))
    env_vars = {"PIP_NO_CACHE_DIR", "PATH"}
    assert {"VARIANT", "TORCH_VERSION", "PYTHON_VERSION"} <= args
    assert used - env_vars <= args, used - args
    assert f"TORCH_VERSION={_torch_pin()}" in {r for k, r in instructions if k == "ARG"}
    runs = " ".join(r for k, r in instructions if k == "RUN")
    assert '"$VARIANT" = "cpu"' in runs and '"$VARIANT" = "cuda"' in runs
    for keyword, rest in instructions:
        if keyword == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source


def test_apptainer_definition_parses_and_defines_its_arguments():
    text = (ROOT / "apptainer.def").read_text()
    header, sections, current = {}, {}, None
    for line in text.splitlines():
        if line.startswith("%"):
            current = line[1:].split()[0]
            sections[current] = []
        elif current is None and line.strip() and not line.startswith("#"):
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
        elif current is not None:
            sections[current].append(line)
    assert set(header) <= APPTAINER_HEADER and header["Bootstrap"] == "docker" and header["From"]
    assert set(sections) <= APPTAINER_SECTIONS, set(sections) - APPTAINER_SECTIONS
    arguments = dict(line.strip().split("=", 1) for line in sections["arguments"] if "=" in line)
    assert arguments["VARIANT"] == "cpu" and arguments["TORCH_VERSION"] == _torch_pin()
    templated = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text))
    assert templated <= set(arguments), templated - set(arguments)
    post = "\n".join(sections["post"])
    assert '"{{ VARIANT }}" = "cpu"' in post and '"{{ VARIANT }}" = "cuda"' in post
    for line in sections["files"]:
        if line.strip():
            assert (ROOT / line.split()[0]).exists(), line


def _snakemake(*args: str, path: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=path)
    return subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"),
         "--configfile", str(ROOT / "configs" / "demo.yaml"), "--directory", str(tmp_path),
         *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip


def test_every_rule_runs_in_the_container_and_a_dry_run_pulls_nothing(tmp_path):
    """`--sdm apptainer` plans the whole demo: Snakemake only asks the (stub)
    apptainer for its version; no image is pulled or run in a dry run."""
    stub = tmp_path / "bin"
    stub.mkdir()
    calls = tmp_path / "calls.log"
    (stub / "apptainer").write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{calls}"\n'
        'if [ "$1" = "--version" ]; then echo "apptainer version 1.3.4"; exit 0; fi\n'
        'echo "stub apptainer refuses: $*" >&2; exit 1\n'
    )
    (stub / "apptainer").chmod(0o755)
    path = os.pathsep.join([str(stub), str(BIN), os.environ.get("PATH", "")])
    work = tmp_path / "work"
    work.mkdir()
    proc = _snakemake("--dry-run", "--sdm", "apptainer", path=path, tmp_path=work)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    out = proc.stdout + proc.stderr
    for rule in ("ingest", "plan", "stitch", "measure", "report", "report_run"):
        assert re.search(rf"^(rule|checkpoint) {rule}:", out, re.M), rule
    assert set(calls.read_text().splitlines()) == {"--version"}  # nothing pulled or run
    # one global container directive, which no rule overrides
    snakefile = (ROOT / "Snakefile").read_text()
    assert re.search(r'^container: config\["container"\]$', snakefile, re.M)
    rules = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    assert "container:" not in rules
    from cellseg.config import DEFAULTS

    assert DEFAULTS["container"] == "cellseg.sif"


def test_snakemake_lint_passes(tmp_path):
    path = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
    proc = _snakemake("--lint", path=path, tmp_path=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


@pytest.mark.parametrize("name", ["Dockerfile", "apptainer.def"])
def test_readme_gives_the_build_commands(name):
    readme = (ROOT / "README.md").read_text()
    assert name in readme and "untested here" in readme
