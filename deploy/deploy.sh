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
#   TAG       image tag (default: the git commit; with uncommitted changes, or outside git, a
#             timestamp is added). The service is deployed by the pushed image's digest, so
#             every deploy of a new build makes a new revision, whatever the tag.
#   BUILDER   cloudbuild (default: `gcloud builds submit`, nothing needed locally) or docker
#             (docker build for linux/amd64 + docker push from this machine, also on ARM)
#   SERVICE_ACCOUNT  the identity the service runs as, created with no roles if missing
#             (default: SERVICE-runtime): scripts never need Google APIs, so the service gets
#             none, instead of the Compute default account (Editor on the project)
#   PUBLIC    1: let anyone call the service (the run.googleapis.com/invoker-iam-disabled
#             annotation, which organisation policies against allUsers grants do not block).
#             Default 0: callers need an identity token with run.invoker (the printed curl
#             line has one), and an earlier public grant to allUsers is taken back.
#
# Needs: gcloud, authenticated (`gcloud auth login`), with the Cloud Run, Artifact Registry,
# IAM and (for cloudbuild) Cloud Build APIs enabled on the project; the roles the deploying
# account needs are listed in README.md ("Cloud Run").
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=${1:-${PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}}
REGION=${2:-${REGION:-us-central1}}
SERVICE=${3:-${SERVICE:-pyexec}}
REPOSITORY=${REPOSITORY:-pyexec}
BUILDER=${BUILDER:-cloudbuild}
PUBLIC=${PUBLIC:-0}
SERVICE_ACCOUNT=${SERVICE_ACCOUNT:-$SERVICE-runtime}

die() { printf 'deploy: %s\n' "$*" >&2; exit 1; }
say() { printf 'deploy: %s\n' "$*" >&2; }

[[ -n $PROJECT ]] || die "no project: pass it as the first argument or set PROJECT"
[[ $SERVICE =~ ^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$ ]] || die "bad service name: $SERVICE"
case $BUILDER in cloudbuild | docker) ;; *) die "BUILDER must be cloudbuild or docker" ;; esac
case $PUBLIC in 0 | 1) ;; *) die "PUBLIC must be 0 or 1" ;; esac
[[ $SERVICE_ACCOUNT =~ ^[a-z][-a-z0-9]{4,28}[a-z0-9]$ ]] ||
	die "bad service account name: $SERVICE_ACCOUNT (6-30 of a-z 0-9 -); set SERVICE_ACCOUNT"

if [[ -z ${TAG:-} ]]; then
	# A dirty tree's tag must not name another dirty tree's image.
	if TAG=$(git rev-parse --short=12 HEAD 2>/dev/null); then
		git diff --quiet HEAD 2>/dev/null || TAG="$TAG-dirty-$(date -u +%Y%m%d-%H%M%S)"
	else
		TAG=$(date -u +%Y%m%d-%H%M%S)
	fi
fi
REPO_PATH="$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY/pyexec"
IMAGE="$REPO_PATH:$TAG"
SA_EMAIL="$SERVICE_ACCOUNT@$PROJECT.iam.gserviceaccount.com"
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

# --- runtime service account: no roles ------------------------------------------------------------
if ! gcloud iam service-accounts describe "$SA_EMAIL" "${gc[@]}" >/dev/null 2>&1; then
	say "creating service account $SA_EMAIL (no roles)"
	gcloud iam service-accounts create "$SERVICE_ACCOUNT" \
		--display-name "pyexec runtime (no roles)" "${gc[@]}"
fi

# --- build and push -----------------------------------------------------------------------------
# The Dockerfile builds nsjail from its upstream tag (Cloud Build and most machines reach
# GitHub); .gcloudignore (Cloud Build's upload) and .dockerignore (the build context) keep to
# the sources the image needs, never .local/.
if [[ $BUILDER == cloudbuild ]]; then
	gcloud builds submit --tag "$IMAGE" --timeout 30m "${gc[@]}" .
else
	gcloud auth configure-docker "$REGION-docker.pkg.dev" --quiet
	# Cloud Run runs linux/amd64 only: an ARM machine's native image would not start.
	docker build --platform linux/amd64 -t "$IMAGE" .
	docker push "$IMAGE"
fi
# Deployed by digest: a spec naming a reused tag would look unchanged to Cloud Run, which would
# then keep serving the old image and make no revision.
digest=$(gcloud artifacts docker images describe "$IMAGE" --format 'value(image_summary.digest)' \
	"${gc[@]}")
[[ $digest == sha256:* ]] || die "no digest for $IMAGE (got '$digest')"
IMAGE_REF="$REPO_PATH@$digest"
say "deploying $IMAGE_REF"

# --- deploy -------------------------------------------------------------------------------------
manifest=$(mktemp "${TMPDIR:-/tmp}/pyexec-service.XXXXXX.yaml")
trap 'rm -f "$manifest"' EXIT
invoker_iam_disabled=false
[[ $PUBLIC == 1 ]] && invoker_iam_disabled=true
sed -e "s|SERVICE_NAME|$SERVICE|g" -e "s|IMAGE_URL|$IMAGE_REF|g" \
	-e "s|SERVICE_ACCOUNT_EMAIL|$SA_EMAIL|g" \
	-e "s|INVOKER_IAM_DISABLED|$invoker_iam_disabled|g" deploy/service.yaml >"$manifest"
gcloud run services replace "$manifest" --region "$REGION" "${gc[@]}"

if [[ $PUBLIC == 1 ]]; then
	say "invoker IAM check disabled: anyone can run scripts on $SERVICE"
elif gcloud run services remove-iam-policy-binding "$SERVICE" --region "$REGION" \
	--member allUsers --role roles/run.invoker "${gc[@]}" >/dev/null 2>&1; then
	say "took back the public grant (allUsers had roles/run.invoker on $SERVICE)"
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
