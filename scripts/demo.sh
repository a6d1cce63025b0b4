#!/usr/bin/env bash
# The main job on the embedded default (a local store, no server): snapshot a directory, change
# it, snapshot again, read the history, and get the old version back byte for byte.
set -euo pipefail
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
echo
echo "demo store kept in $work"
