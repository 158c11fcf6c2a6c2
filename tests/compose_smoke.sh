#!/usr/bin/env bash
# Compose smoke test: `docker compose up` as a newcomer runs it, on this machine's local engine.
# Checks that every service turns healthy, envelopes reach the receiver, Prometheus scrapes the
# service and has loaded the alerting rules, a 20 s receiver outage costs no seq (the spool), the
# image runs as non-root without a compiler, and `stop` ends the service with 0.
# Cleans up (compose down -v; engine stop, if this script started the engine) also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-$(cd .. && pwd)/shared}
ENGINE=$SHARED/docker/engine.sh
COMPOSE=$SHARED/docker/compose.sh
export COMPOSE_PROJECT_NAME=wsingest
IMAGE=ws-ingest:local

say() { echo "compose-smoke: $*"; }
fail() { say "FAILED: $*"; "$COMPOSE" ps || true; "$COMPOSE" logs --tail=40 || true; exit 1; }

eval "$("$ENGINE" env)"
if docker version >/dev/null 2>&1; then engine_was_running=1; else engine_was_running=0; fi
eval "$("$ENGINE" start)"
cleanup() {
  "$COMPOSE" --profile cluster down -v --remove-orphans >/dev/null 2>&1 || true
  [ "$engine_was_running" = 1 ] || "$ENGINE" stop || true  # leave an engine we did not start
}
trap cleanup EXIT

say "docker compose up -d --build"
"$COMPOSE" up -d --build

container() { "$COMPOSE" ps -q "$1"; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$(container "$1")"; }

wait_healthy() {
  local service
  for service in "$@"; do
    for _ in $(seq 120); do
      [ "$(health "$service")" = healthy ] && break
      sleep 1
    done
    [ "$(health "$service")" = healthy ] || fail "$service is $(health "$service")"
    say "$service healthy"
  done
}
wait_healthy feed receiver ingest prometheus

# Polls a check written in Python until it passes (60 s at most).
check() {
  local name=$1 code=$2
  for _ in $(seq 60); do
    if python3 -c "$code" 2>/dev/null; then say "ok: $name"; return 0; fi
    sleep 1
  done
  python3 -c "$code" || fail "$name"
}

check "the receiver got envelopes from every demo feed" '
import json, urllib.request
counts = json.load(urllib.request.urlopen("http://127.0.0.1:8766/counts", timeout=3))
assert set(counts["last"]) == {"source", "seq", "received_at", "data"}, counts["last"]
assert all(counts["sources"].get(s, {}).get("count", 0) > 0 for s in ("alpha", "beta", "gamma")), counts
print(json.dumps(counts["sources"]))
'
check "Prometheus has ingest_messages_received_total > 0 for the demo feed" '
import json, urllib.parse, urllib.request
q = urllib.parse.quote("ingest_messages_received_total{source=\"alpha\"} > 0")
result = json.load(urllib.request.urlopen("http://127.0.0.1:9090/api/v1/query?query=" + q, timeout=3))
assert result["data"]["result"], result
print(result["data"]["result"][0]["value"])
'
check "Prometheus loaded the alerting rules of config/prometheus/alerts.yml and evaluates them" '
import json, urllib.request
groups = json.load(urllib.request.urlopen("http://127.0.0.1:9090/api/v1/rules", timeout=3))["data"]["groups"]
rules = {r["name"]: r["health"] for g in groups for r in g["rules"]}
assert {"IngestFeedDown", "IngestFeedSilent", "IngestSinkDown", "IngestSpoolFilling"} <= set(rules), rules
assert set(rules.values()) == {"ok"}, rules
print(len(rules), "rules")
'

# The spool (INGEST_SPOOL_DIR on the named volume ingest-spool): a receiver outage of 20 s costs
# no envelope. The feed is paused first, so that the receiver's counts stand still and are read
# exactly; the outage starts with the feed running again.
counts_before=$(mktemp)
"$COMPOSE" pause feed
check "the receiver's counts stand still while the feed is paused" "
import json, time, urllib.request
def sources():
    return json.load(urllib.request.urlopen('http://127.0.0.1:8766/counts', timeout=3))['sources']
first = sources(); time.sleep(1); second = sources()
assert first == second and all(s['gaps'] == 0 for s in second.values()), (first, second)
json.dump(second, open('$counts_before', 'w'))
"
"$COMPOSE" stop receiver
"$COMPOSE" unpause feed
say "receiver stopped for 20 s"
sleep 20
check "ingest stays ready with the receiver down, spooling" '
import json, urllib.request
body = json.load(urllib.request.urlopen("http://127.0.0.1:9108/readyz", timeout=3))
assert body["ready"] and not body["sink_up"] and body["spool_bytes"] > 0, body
print(body)
'
"$COMPOSE" start receiver
wait_healthy receiver
check "no seq missing at the receiver after its outage, and the spool drained" "
import json, urllib.request
before = json.load(open('$counts_before'))
after = json.load(urllib.request.urlopen('http://127.0.0.1:8766/counts', timeout=3))['sources']
for name, old in before.items():
    new = after[name]
    first_seq = new['last_seq'] - (new['count'] - new['repeats']) + 1  # no gaps: contiguous
    assert new['gaps'] == 0 and first_seq <= old['last_seq'] + 1, (name, old, new)
    assert new['last_seq'] > old['last_seq'], (name, old, new)
metrics = urllib.request.urlopen('http://127.0.0.1:9108/metrics', timeout=3).read().decode()
assert 'ingest_spool_messages 0.0' in metrics.splitlines(), 'spool not drained yet'
print(json.dumps(after))
"
rm -f "$counts_before"

uid=$(docker run --rm --network none --entrypoint id "$IMAGE" -u)
[ "$uid" != 0 ] || fail "the image runs as root"
say "ok: the image runs as uid $uid"
compilers=$(docker run --rm --network none --entrypoint sh "$IMAGE" -c \
  'for c in gcc cc c++ g++ clang tcc make; do command -v $c; done; true')
[ -z "$compilers" ] || fail "compilers in the image: $compilers"
say "ok: no compiler in the image"

say "docker compose --profile cluster up -d"
"$COMPOSE" --profile cluster up -d
wait_healthy ingest-0 ingest-1
check "Prometheus sees the six cluster feeds, each up on exactly one process" '
import json, urllib.parse, urllib.request
q = urllib.parse.quote("sum by (source) (ingest_source_up{job=\"ingest-cluster\"})")
result = json.load(urllib.request.urlopen("http://127.0.0.1:9090/api/v1/query?query=" + q, timeout=3))
up = {r["metric"]["source"]: float(r["value"][1]) for r in result["data"]["result"]}
assert len(up) == 6 and set(up.values()) == {1.0}, up
q = urllib.parse.quote("count by (instance) (ingest_source_up{job=\"ingest-cluster\"})")
result = json.load(urllib.request.urlopen("http://127.0.0.1:9090/api/v1/query?query=" + q, timeout=3))
per_process = {r["metric"]["instance"]: int(r["value"][1]) for r in result["data"]["result"]}
assert len(per_process) == 2, per_process
print(up, per_process)
'
cluster_ids="$(container ingest-0) $(container ingest-1)"
"$COMPOSE" --profile cluster stop ingest-0 ingest-1
for cid in $cluster_ids; do
  code=$(docker inspect -f '{{.State.ExitCode}}' "$cid")
  [ "$code" = 0 ] || fail "compose stop of the cluster: exit code $code"
done
say "ok: compose stop of the cluster -> exit codes 0"

id=$(container ingest)
"$COMPOSE" stop ingest
code=$(docker inspect -f '{{.State.ExitCode}}' "$id")
[ "$code" = 0 ] || fail "compose stop ingest: exit code $code"
docker logs "$id" 2>&1 | grep -q '"event": "stopped"' || fail "no 'stopped' log line"
say "ok: compose stop ingest -> exit code 0"
say "passed"
