"""deploy/: the Dockerfile read line by line, the wheel it installs built for real, the lock files.

No container engine here can pull a base image, so the image is checked by what it says and by
building the same wheel from the same files the Dockerfile copies.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
SECRET_WORDS = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|PRIVATE", re.IGNORECASE)


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def _stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for item in instructions:
        if item[0] == "FROM":
            stages.append([])
        stages[-1].append(item)
    return stages


def test_dockerfile_is_multi_stage_non_root_with_a_health_check_and_no_secret():
    instructions = _instructions(DOCKERFILE)
    stages = _stages(instructions)
    assert len(stages) >= 2, "a build stage and a slim run stage"
    final = stages[-1]
    assert "slim" in final[0][1]
    users = [args for name, args in final if name == "USER"]
    assert users, "the final stage must switch to a user"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert any(name == "HEALTHCHECK" and "CMD" in args for name, args in final)
    assert any(name == "VOLUME" and "/var/lib/tinbao" in args for name, args in final)
    assert any(name == "ENV" and "TINBAO_DATA_DIR=/var/lib/tinbao" in args for name, args in final)
    # The final stage copies only the built environment, never the sources or a .env.
    copies = [args for name, args in final if name == "COPY"]
    assert copies and all(args.startswith("--from=") for args in copies)
    for name, args in instructions:
        if name in ("ENV", "ARG"):
            for key in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", args):
                assert not SECRET_WORDS.search(key), f"{name} {key}: secrets come at run time"
        if name in ("COPY", "ADD"):
            assert ".env" not in args.split() and "secret.key" not in args
    # Installed with the locked dependencies.
    build = stages[0]
    assert any(name == "COPY" and "requirements.lock" in args for name, args in build)
    assert any(name == "RUN" and "--constraint requirements.lock" in args for name, args in build)


def test_the_wheel_the_dockerfile_installs_has_locales_templates_and_migrations(tmp_path):
    """Copy exactly what the build stage copies, build the wheel as it does, and look inside."""
    context = tmp_path / "context"
    context.mkdir()
    build = _stages(_instructions(DOCKERFILE))[0]
    for name, args in build:
        if name != "COPY":
            continue
        *sources, target = args.split()
        for source in sources:
            origin = ROOT / source
            destination = context / (source if target.endswith("/") else target)
            if origin.is_dir():
                shutil.copytree(
                    origin, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                shutil.copy2(origin, destination)
    wheels = tmp_path / "wheels"
    subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), "."],
        cwd=context,
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("tinbao-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = [
        *ROOT.glob("handlers/locales/*.json"),
        *ROOT.glob("admin/templates/**/*.html"),
        *ROOT.glob("storage/migrations/versions/*.py"),
        *ROOT.glob("storage/migrations/*.py"),
        *ROOT.glob("storage/migrations/*.mako"),
        *ROOT.glob("config/data/*.json"),
    ]
    assert len([p for p in expected if "locales" in p.parts]) >= 10
    assert any("versions" in p.parts for p in expected)
    missing = [
        str(p.relative_to(ROOT)) for p in expected if p.relative_to(ROOT).as_posix() not in names
    ]
    assert not missing, f"not in the wheel: {missing}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "tinbao = bot.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-test.lock"])
def test_lock_files_pin_every_dependency(lock):
    text = (ROOT / lock).read_text(encoding="utf-8")
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.MULTILINE))
    for name in ("python-telegram-bot", "sqlalchemy", "asyncpg", "cryptography", "aiohttp"):
        assert name in {p.lower() for p in pins}, f"{name} is not pinned in {lock}"
    # Nothing of this machine's pip configuration leaks into the lock.
    assert "--find-links" not in text and "--index-url" not in text
    if lock == "requirements-test.lock":
        assert "pytest" in pins
        runtime = dict(
            re.findall(
                r"^([A-Za-z0-9_.\-]+)==(\S+)",
                (ROOT / "requirements.lock").read_text(encoding="utf-8"),
                re.MULTILINE,
            )
        )
        assert all(pins.get(name, version) == version for name, version in runtime.items())


def test_systemd_unit_is_hardened():
    unit = (ROOT / "deploy" / "tinbao.service").read_text(encoding="utf-8")
    for line in (
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "User=tinbao",
        "ExecStart=/opt/tinbao/bin/tinbao run --role %i",
    ):
        assert re.search(rf"^{re.escape(line)}$", unit, re.MULTILINE), line
