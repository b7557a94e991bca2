#!/usr/bin/env bash
# Build, migrate, roll the processes: the single-machine deployment of docker-compose.yml.
#   scripts/deploy.sh              build the image from this checkout and roll everything
#   DRY_RUN=1 scripts/deploy.sh    print the steps without running them
#   SEED=1 scripts/deploy.sh       also run scripts/seed (SEED_ADMIN_EMAIL, ... from the environment)
# Order matters: migrations are additive and run before any new code serves traffic; the API rolls
# first (old workers keep running the same task names), then the workers (a warm shutdown lets
# running upstream calls finish, see stop_grace_period), then beat and Flower. On several machines
# or behind a load balancer, roll API replicas one at a time and wait for /health/ready on each.
set -euo pipefail
cd "$(dirname "$0")/.."

COMPOSE=${COMPOSE:-docker compose}
TAG=${TAG:-$(git rev-parse --short HEAD 2>/dev/null || echo latest)}
export SFX_IMAGE=${SFX_IMAGE:-sfx-backend:$TAG}

run() {
  echo "+ $*"
  if [ "${DRY_RUN:-0}" != 1 ]; then "$@"; fi
}

wait_healthy() {
  local service=$1
  echo "+ wait until $service is healthy"
  [ "${DRY_RUN:-0}" = 1 ] && return 0
  for _ in $(seq 1 60); do
    local id state
    id=$($COMPOSE ps -q "$service")
    state=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || true)
    [ "$state" = healthy ] && return 0
    sleep 2
  done
  echo "$service did not become healthy; its last logs:" >&2
  $COMPOSE logs --tail 50 "$service" >&2
  return 1
}

echo "deploying $SFX_IMAGE"
run $COMPOSE build api                       # one image for api, worker, beat, flower, migrate
run $COMPOSE up -d postgres redis minio      # stateful services stay up across deploys
run $COMPOSE up minio-init                   # bucket and lifecycle rule (idempotent)
run $COMPOSE run --rm migrate                # schema first; stops the deploy if it fails
if [ "${SEED:-0}" = 1 ]; then
  run $COMPOSE run --rm -e SEED_ADMIN_EMAIL -e SEED_ADMIN_PASSWORD -e SEED_DEMO_USERS -e SEED_DEMO_PASSWORD \
    -e SEED_DEMO_DOMAIN migrate scripts/seed
fi
run $COMPOSE up -d --no-deps api
wait_healthy api
run $COMPOSE up -d --no-deps worker
run $COMPOSE up -d --no-deps beat flower
echo "deployed $SFX_IMAGE"
