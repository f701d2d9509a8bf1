"""deploy/Dockerfile: the runtime image suits Kubernetes (read without a Docker engine).

The final stage must run as a dedicated numeric non-root user (kubelet can verify
``runAsNonRoot`` only for a numeric USER), leave health checking to the probes, expose the
HTTP port and start ``optout``; no stage may bake a secret into a layer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from service.settings import Settings

DOCKERFILE = Path(__file__).resolve().parents[2] / "deploy" / "Dockerfile"
SECRET_SETTINGS = ("OPTOUT_DATABASE_URL", "OPTOUT_REDIS_URL", "OPTOUT_API_TOKENS")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def instructions(text: str) -> list[Instruction]:
    """Instructions with comments dropped and backslash continuations joined."""
    result: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, arguments = line.partition(" ")
        result.append(Instruction(keyword.upper(), arguments.strip()))
    return result


def stages(text: str) -> list[list[Instruction]]:
    found: list[list[Instruction]] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def _final_stage() -> list[Instruction]:
    return stages(DOCKERFILE.read_text(encoding="utf-8"))[-1]


def test_parser_joins_continuations_and_splits_stages() -> None:
    text = "ARG X=1\nFROM a AS b\nRUN one \\\n  # comment\n  two\nFROM c\nUSER 5:5\n"
    parsed = stages(text)
    assert [[i.keyword for i in stage] for stage in parsed] == [["FROM", "RUN"], ["FROM", "USER"]]
    assert parsed[0][1].arguments == "one  two"


def test_final_stage_runs_as_a_dedicated_numeric_non_root_user() -> None:
    final = _final_stage()
    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert match is not None, f"USER {users[-1]} is not numeric"
    uid, gid = int(match.group(1)), int(match.group(2) or match.group(1))
    assert uid > 0
    assert gid > 0
    created = " ".join(i.arguments for i in final if i.keyword == "RUN")
    assert re.search(rf"useradd\b[^&;]*--uid {uid}\b", created), "the user is not created"
    assert re.search(rf"groupadd\b[^&;]*--gid {gid}\b", created), "the group is not created"
    # Nothing after USER switches back to root.
    after = final[[i.keyword for i in final].index("USER") :]
    assert all(i.keyword != "USER" or i.arguments == users[-1] for i in after)


def test_no_healthcheck_the_orchestrator_probes() -> None:
    keywords = [i.keyword for stage in stages(DOCKERFILE.read_text()) for i in stage]
    assert "HEALTHCHECK" not in keywords


def test_exposes_the_http_port_and_starts_optout() -> None:
    final = _final_stage()
    exposed = {p.split("/")[0] for i in final if i.keyword == "EXPOSE" for p in i.arguments.split()}
    defaults = Settings.model_construct()
    assert exposed == {str(defaults.http_port), str(defaults.admin_port)}
    (entrypoint,) = [i.arguments for i in final if i.keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["optout"], "exec form, so optout gets SIGTERM as PID 1"
    (cmd,) = [i.arguments for i in final if i.keyword == "CMD"]
    assert json.loads(cmd)[0] in {"worker", "api", "run"}


def test_no_secret_is_baked_into_the_image() -> None:
    for stage in stages(DOCKERFILE.read_text(encoding="utf-8")):
        for instruction in stage:
            if instruction.keyword in {"ENV", "ARG", "LABEL"}:
                for name in SECRET_SETTINGS:
                    assert name not in instruction.arguments, instruction
                assert not re.search(r"(?i)password|secret|token", instruction.arguments)
            if instruction.keyword in {"COPY", "ADD"}:
                assert not re.search(r"\.env\b|\.stack|api-token", instruction.arguments)


def test_runtime_stage_copies_only_the_virtualenv() -> None:
    copies = [i.arguments for i in _final_stage() if i.keyword in {"COPY", "ADD"}]
    assert copies == ["--from=build /opt/venv /opt/venv"]


def test_build_context_holds_only_what_the_image_copies() -> None:
    ignore = (DOCKERFILE.parents[1] / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "allow-list: everything is excluded first"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied: set[str] = set()
    for stage in stages(DOCKERFILE.read_text(encoding="utf-8")):
        for instruction in stage:
            if instruction.keyword == "COPY" and "--from=" not in instruction.arguments:
                *sources, _ = instruction.arguments.split()
                copied.update(s.rstrip("/") for s in sources)
    assert copied == allowed
