#!/bin/sh
# Build the image that 30-deployment.yaml runs, from the repository's Dockerfile, and push it.
#
#   config/deploy/build-image.sh                    # builds fastingress:VERSION (load it into kind/minikube)
#   config/deploy/build-image.sh REGISTRY/PATH      # also tags and pushes REGISTRY/PATH/fastingress:VERSION
#
# VERSION is [project].version of pyproject.toml, the tag 30-deployment.yaml names.  $DOCKER picks
# another client with the same commands (DOCKER=podman).  After a push, point the Deployment at it:
#   kubectl -n fastingress set image deployment/fastingress controller=REGISTRY/PATH/fastingress:VERSION
set -eu
cd "$(dirname "$0")/../.."
docker=${DOCKER:-docker}
version=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' pyproject.toml | head -n 1)
[ -n "$version" ] || { echo "build-image.sh: no version in pyproject.toml" >&2; exit 2; }
image="fastingress:$version"
"$docker" build -t "$image" .
echo "built $image"
if [ $# -ge 1 ]; then
  remote="${1%/}/fastingress:$version"
  "$docker" tag "$image" "$remote"
  "$docker" push "$remote"
  echo "pushed $remote; now: kubectl -n fastingress set image deployment/fastingress controller=$remote"
fi
