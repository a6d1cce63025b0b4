#!/usr/bin/env bash
# The main job on the embedded default (a local store, no server): snapshot a directory, change
# it, snapshot again, read the history, get the old version back byte for byte; then mount the
# lake and use it with ordinary tools, write through the mount, and run a pipeline on it.
set -euo pipefail
if [ -z "${PYTHON:-}" ] && [ -x "$(dirname "$0")/../.venv/bin/python" ]; then
    venv_bin="$(cd "$(dirname "$0")/../.venv/bin" && pwd)"  # made by setup.sh (PEP 668)
    export PATH="$venv_bin:$PATH" PYTHON="$venv_bin/python"
fi
work="$(mktemp -d /tmp/cowfs-demo.XXXXXX)"
export COWFS_STORE="$work/store" COWFS_CACHE_DIR="$work/cache" COWFS_STATE_DIR="$work/state"
cd "$work"
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

mkdir -p photos/cats photos/dogs
for i in 1 2 3; do head -c 300000 /dev/urandom > "photos/cats/$i.jpg"; done
head -c 300000 /dev/urandom > photos/dogs/rex.jpg
head -c 20000000 /dev/urandom > photos/big.bin
printf 'name,label\n1.jpg,cat\n' > photos/labels.csv

run cowfs init
run cowfs repo create images
say "cowfs put images@main ./photos -m first"
first=$(cowfs put images@main ./photos -m first | tail -n1)
echo "$first"
cp -a photos photos-first

head -c 300000 /dev/urandom > photos/cats/4.jpg
rm photos/dogs/rex.jpg
printf 'name,label\n1.jpg,cat\n4.jpg,cat\n' > photos/labels.csv
dd if=/dev/urandom of=photos/big.bin bs=1M count=1 seek=10 conv=notrunc status=none
run cowfs put images@main ./photos -m "second: one more cat, no dogs"
run cowfs ls images@main:/
run cowfs log images@main
run cowfs diff "images@$first" images@main
run cowfs get "images@$first" ./restore
run diff -r photos-first restore
echo "identical: the first snapshot came back byte for byte"
run cowfs stats

# --- history: tags, merge, revert, gc, check -------------------------------------------------
run cowfs tag create images@v1 --from "images@$first"
run cowfs ls images@v1:/
run cowfs branch create images@relabel --from images@main
echo "relabelled" > note.txt
run cowfs put images@relabel:/note.txt note.txt
run cowfs merge images@relabel images@main
run cowfs revert images@main images@main -m "undo the merge's note"
run cowfs gc --dry-run
run cowfs check --read-data

# --- the mount -------------------------------------------------------------------------------
mkdir -p pfs
trap 'cowfs umount "$work/pfs" >/dev/null 2>&1 || true' EXIT
run cowfs mount "$work/pfs" --background
run ls pfs pfs/images
run sha256sum pfs/images/main/cats/1.jpg "pfs/images/@$first/cats/1.jpg"
run getfattr -n user.cowfs.commit pfs/images/main
run cowfs write images@main
run cp photos/cats/4.jpg pfs/images/main/cats/5.jpg
run mv pfs/images/main/labels.csv pfs/images/main/labels-v2.csv
run cowfs commit images@main -m "relabel through the mount"
run ls pfs/images/main pfs/images/main/cats
run cowfs warmup images@main:/cats   # fetch a path's chunks ahead of an epoch over it

# --- Python: the API and cowfs:// for fsspec (no mount needed) ---------------------------------
say 'python3: cowfs.connect(), lake.writer(), fsspec.filesystem("cowfs") with a transaction'
"${PYTHON:-python3}" - <<'PY'
import cowfs, fsspec
lake = cowfs.connect()  # COWFS_STORE, as the CLI
c = lake.commit_of("images@main")
print(f"images@main is {c.id}: {c.files} files, {c.bytes} bytes")
print("cats:", [i.name for i in lake.ls("images@main:/cats")])
with lake.writer("images@main", message="labels from Python") as w:  # one commit
    w.put_bytes("labels.csv", b"name,label\n1.jpg,cat\n4.jpg,cat\n5.jpg,cat\n")
fs = fsspec.filesystem("cowfs", message="notes via fsspec")  # found by its entry point
with fs.transaction:  # one commit for all of it
    fs.pipe("cowfs://images@main/notes/readme.txt", b"written by fsspec\n")
    fs.mv("images@main/labels-v2.csv", "images@main/notes/labels-old.csv")
print(fs.cat("cowfs://images@main/labels.csv").decode(), end="")
print("ukey = content digest:", fs.ukey("images@main/labels.csv")[:16], "...")
print("log:", [x.message for x in lake.log("images@main")][:3])
PY

# --- a pipeline --------------------------------------------------------------------------------
cat > sizes.yaml <<'YAML'
pipeline: sizes
input: {pfs: {repo: images, branch: main, glob: "/cats/*"}}
transform:
  cmd: [sh, -c, 'for f in /pfs/images/cats/*; do wc -c < "$f" > "/pfs/out/$(basename "$f").size"; done']
YAML
run cat sizes.yaml
run cowfs pipeline create -f sizes.yaml
run cowfs pipeline run sizes
run ls pfs/sizes/main
gid=$(cowfs log images@main --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["global_id"])')
run cowfs inspect "$gid"
run cowfs lineage sizes@main --upstream
# Each datum records where it ran (the host here; the Ray node with `--runner ray`), and user
# code ran as an unprivileged user (nobody) with /etc/shadow out of sight.
job=$(cowfs job list --pipeline sizes --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
run cowfs datum list "$job" --json
run cowfs umount "$work/pfs"
trap - EXIT
# --- the S3 gateway -----------------------------------------------------------------------------
printf '[s3]\naccess_key = "demo"\nsecret_key = "demo-secret"\n' > s3.toml
port=$("${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
say "cowfs s3 serve --listen 127.0.0.1:$port --config s3.toml &"
cowfs s3 serve --listen "127.0.0.1:$port" --config s3.toml 2> s3.log &
gateway=$!
trap 'kill "$gateway" 2>/dev/null || true' EXIT
until grep -q serving s3.log; do sleep 0.1; done
say "boto3: list s3://images/main/cats/, read a commit's labels, write s3://main.images/new.csv"
"${PYTHON:-python3}" - "$port" "$first" <<'PY'
import sys

import boto3

s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1",
                  aws_access_key_id="demo", aws_secret_access_key="demo-secret")
for obj in s3.list_objects_v2(Bucket="images", Prefix="main/cats/")["Contents"]:
    print(obj["Key"], obj["Size"], obj["ETag"][:18] + '..."')
print(s3.get_object(Bucket="images", Key=f"{sys.argv[2]}/labels.csv")["Body"].read().decode())
s3.put_object(Bucket="main.images", Key="new.csv", Body=b"written,through,s3\n")
PY
run cowfs cat images@main:/new.csv
run cowfs log images@main -n 1
kill "$gateway"
wait "$gateway" 2>/dev/null || true
trap - EXIT
echo
echo "demo store kept in $work"
