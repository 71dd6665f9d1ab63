"""deploy/deploy.sh and deploy/service.yaml, checked without Google Cloud: deploy.sh runs with
fake gcloud and docker commands that record what they were asked and answer as the real ones
would, and the manifest it applies is read back."""

import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "ab" * 32

FAKE_GCLOUD = r"""#!/bin/bash
printf '%s\n' "gcloud $*" >>"$FAKE_LOG"
args=" $* "
case $args in
*" config get-value project "*) echo fake-project ;;
*" artifacts docker images describe "*) echo "$FAKE_DIGEST" ;;
*" iam service-accounts describe "*) exit 1 ;;
*" run services replace "*)
	for a in "$@"; do [[ -f $a ]] && cp "$a" "$FAKE_MANIFEST"; done ;;
*" run services describe "*) echo https://pyexec-fake.a.run.app ;;
esac
exit 0
"""

FAKE_DOCKER = r"""#!/bin/bash
printf '%s\n' "docker $*" >>"$FAKE_LOG"
"""


@pytest.fixture
def deploy(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("gcloud", FAKE_GCLOUD), ("docker", FAKE_DOCKER)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    def run(**env):
        log, manifest = tmp_path / "calls.log", tmp_path / "applied.yaml"
        log.write_text("")
        full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                    "FAKE_LOG": str(log), "FAKE_MANIFEST": str(manifest),
                    "FAKE_DIGEST": DIGEST, **env}
        done = subprocess.run(["bash", str(ROOT / "deploy/deploy.sh")], env=full_env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return log.read_text().splitlines(), yaml.safe_load(manifest.read_text())

    return run


def container(manifest):
    return manifest["spec"]["template"]["spec"]["containers"][0]


def test_deploys_the_pushed_image_by_digest(deploy):
    calls, manifest = deploy()
    image = container(manifest)["image"]
    assert image.endswith("/pyexec@" + DIGEST), image
    assert image.startswith("us-central1-docker.pkg.dev/fake-project/pyexec/"), image


def test_runs_as_its_own_service_account_with_no_roles(deploy):
    calls, manifest = deploy()
    account = manifest["spec"]["template"]["spec"]["serviceAccountName"]
    assert account == "pyexec-runtime@fake-project.iam.gserviceaccount.com", account
    assert any(" iam service-accounts create pyexec-runtime " in f" {c} " for c in calls), calls
    assert not any("projects add-iam-policy-binding" in c for c in calls), calls


def test_startup_probe_has_room_for_a_cold_start():
    manifest = yaml.safe_load((ROOT / "deploy/service.yaml").read_text())
    probe = container(manifest)["startupProbe"]
    window = probe["periodSeconds"] * probe["failureThreshold"]
    assert 120 <= window <= 240, probe  # Cloud Run's limit is 240 s


@pytest.mark.parametrize("public, disabled", [("1", "true"), ("0", "false")])
def test_public_access_by_annotation_and_revoked_when_private(deploy, public, disabled):
    calls, manifest = deploy(PUBLIC=public)
    annotations = manifest["metadata"]["annotations"]
    assert annotations["run.googleapis.com/invoker-iam-disabled"] == disabled, annotations
    assert not any("add-iam-policy-binding" in c and "allUsers" in c for c in calls), calls
    revoked = [c for c in calls if "remove-iam-policy-binding" in c and "allUsers" in c]
    assert bool(revoked) == (public == "0"), calls


def test_docker_builds_for_cloud_runs_platform(deploy):
    calls, manifest = deploy(BUILDER="docker")
    builds = [c for c in calls if c.startswith("docker build")]
    assert builds and all("--platform linux/amd64" in c for c in builds), calls
    assert container(manifest)["image"].endswith("@" + DIGEST)


def test_cloud_build_never_uploads_local_files(tmp_path):
    """.gcloudignore decides what `gcloud builds submit` uploads (gitignore syntax): checked
    here with git's own matcher on a scratch repository."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text((ROOT / ".gcloudignore").read_text())

    def ignored(path):
        done = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", "--no-index", path])
        return done.returncode == 0

    for path in (".local/nsjail", ".local/bin/nsjail", ".local/src/x.c", "build/pyexecd",
                 ".git/config", "tests/http/test_contract.py", ".pytest_cache/x"):
        assert ignored(path), path
    for path in ("Dockerfile", ".dockerignore", "Makefile", "src/http.c", "src/http.h",
                 "runner/runner.py", "config/nsjail.cfg", "config/nsjail-restricted.cfg",
                 "config/seccomp.kafel"):
        assert not ignored(path), path


def test_deploy_script_passes_shellcheck():
    done = subprocess.run(["shellcheck", str(ROOT / "deploy/deploy.sh")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout
