#!/usr/bin/env bash
# Build the pyexec image, push it to Artifact Registry and deploy it to Cloud Run (gen2) from
# deploy/service.yaml. Prints the service URL and a curl line to try it.
#
#   deploy/deploy.sh [PROJECT [REGION [SERVICE]]]
#
# Arguments win over the environment:
#   PROJECT   Google Cloud project (default: gcloud's configured project)
#   REGION    Cloud Run and Artifact Registry region (default: us-central1)
#   SERVICE   Cloud Run service name (default: pyexec)
#   REPOSITORY  Artifact Registry Docker repository, created if missing (default: pyexec)
#   TAG       image tag (default: the git commit, with -dirty for uncommitted changes, or a
#             timestamp outside git)
#   BUILDER   cloudbuild (default: `gcloud builds submit`, nothing needed locally) or docker
#             (docker build + docker push from this machine)
#   PUBLIC    1: let anyone call the service (grants roles/run.invoker to allUsers). Default 0:
#             callers need an identity token with run.invoker (the printed curl line has one).
#
# Needs: gcloud, authenticated (`gcloud auth login`), with the Cloud Run, Artifact Registry and
# (for cloudbuild) Cloud Build APIs enabled on the project.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=${1:-${PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}}
REGION=${2:-${REGION:-us-central1}}
SERVICE=${3:-${SERVICE:-pyexec}}
REPOSITORY=${REPOSITORY:-pyexec}
BUILDER=${BUILDER:-cloudbuild}
PUBLIC=${PUBLIC:-0}

die() { printf 'deploy: %s\n' "$*" >&2; exit 1; }
say() { printf 'deploy: %s\n' "$*" >&2; }

[[ -n $PROJECT ]] || die "no project: pass it as the first argument or set PROJECT"
[[ $SERVICE =~ ^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$ ]] || die "bad service name: $SERVICE"
case $BUILDER in cloudbuild | docker) ;; *) die "BUILDER must be cloudbuild or docker" ;; esac

if [[ -z ${TAG:-} ]]; then
	if TAG=$(git rev-parse --short=12 HEAD 2>/dev/null); then
		git diff --quiet HEAD 2>/dev/null || TAG="$TAG-dirty"
	else
		TAG=$(date -u +%Y%m%d-%H%M%S)
	fi
fi
IMAGE="$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY/pyexec:$TAG"
gc=(--project "$PROJECT" --quiet)

say "project $PROJECT, region $REGION, service $SERVICE"
say "image $IMAGE"

# --- Artifact Registry repository ---------------------------------------------------------------
if ! gcloud artifacts repositories describe "$REPOSITORY" --location "$REGION" "${gc[@]}" \
	>/dev/null 2>&1; then
	say "creating Artifact Registry repository $REPOSITORY in $REGION"
	gcloud artifacts repositories create "$REPOSITORY" --repository-format docker \
		--location "$REGION" --description "pyexec images" "${gc[@]}"
fi

# --- build and push -----------------------------------------------------------------------------
# The Dockerfile builds nsjail from its upstream tag (Cloud Build and most machines reach
# GitHub); .dockerignore keeps the context to the sources the image needs.
if [[ $BUILDER == cloudbuild ]]; then
	gcloud builds submit --tag "$IMAGE" --timeout 30m "${gc[@]}" .
else
	gcloud auth configure-docker "$REGION-docker.pkg.dev" --quiet
	docker build -t "$IMAGE" .
	docker push "$IMAGE"
fi

# --- deploy -------------------------------------------------------------------------------------
manifest=$(mktemp "${TMPDIR:-/tmp}/pyexec-service.XXXXXX.yaml")
trap 'rm -f "$manifest"' EXIT
sed -e "s|SERVICE_NAME|$SERVICE|g" -e "s|IMAGE_URL|$IMAGE|g" deploy/service.yaml >"$manifest"
gcloud run services replace "$manifest" --region "$REGION" "${gc[@]}"

if [[ $PUBLIC == 1 ]]; then
	say "granting roles/run.invoker to allUsers: anyone can run scripts on $SERVICE"
	gcloud run services add-iam-policy-binding "$SERVICE" --region "$REGION" \
		--member allUsers --role roles/run.invoker "${gc[@]}" >/dev/null
fi

url=$(gcloud run services describe "$SERVICE" --region "$REGION" --format 'value(status.url)' \
	"${gc[@]}")
[[ -n $url ]] || die "the service has no URL yet; see: gcloud run services describe $SERVICE --region $REGION --project $PROJECT"

auth=""
if [[ $PUBLIC != 1 ]]; then
	# shellcheck disable=SC2016  # printed for the user's shell to expand
	auth=' -H "Authorization: Bearer $(gcloud auth print-identity-token)"'
fi
cat <<MSG

Service URL: $url

Try it:
curl -s $url/execute -H 'Content-Type: application/json'$auth \\
    -d '{"script": "def main():\\n    print(\\"hi\\")\\n    return {\\"answer\\": 42}\\n"}'
MSG
