#!/usr/bin/env bash
# Lists the checkpoints in the compose checkpoints volume, or copies one to the host and verifies the copy.
set -euo pipefail
# shellcheck source=scripts/docker_check.sh
source "$(dirname "${BASH_SOURCE[0]}")/docker_check.sh"

usage() {
  cat <<'EOF'
Usage: scripts/download_checkpoint.sh --list
       scripts/download_checkpoint.sh NAME [--dest DIR] [--force]

--list       the checkpoints in the checkpoints volume: name, size and last change (UTC)
NAME         copy /model_checkpoints/NAME out of the volume into DIR/NAME (default DIR: ./checkpoints)
--dest DIR   where to put it
--force      replace DIR/NAME if it exists
-h, --help   this text

The copy is verified: the file count and the SHA-256 of every file, computed inside the container from
the volume, must match the files on the host. It is made in DIR/.tmp-NAME-* and renamed only once
verified, so DIR/NAME is always complete. The manifest is kept as DIR/NAME.sha256
(check later with: cd DIR/NAME && sha256sum -c ../NAME.sha256).
An unknown or missing NAME is refused with the list of checkpoints there are.
EOF
}

human_size() {
  numfmt --to=iec-i --suffix=B --format='%.1f' "$1" 2>/dev/null || echo "${1}B"
}

list=0
name=""
have_name=0
dest="$BC_ROOT/checkpoints"
force=0
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --list) list=1; shift ;;
    --dest)
      (($# >= 2)) || die "--dest needs a directory"
      dest=$2
      shift 2
      ;;
    --dest=*) dest=${1#--dest=}; shift ;;
    --force) force=1; shift ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
      ((have_name == 0)) || die "one checkpoint at a time (got '$name' and '$1')"
      name=$1
      have_name=1
      shift
      ;;
  esac
done

require_docker

if ((list)); then
  listing=$(list_checkpoints)
  if [[ -z $listing ]]; then
    echo "no checkpoints yet: 'make fine-tune-local' writes them."
    exit 0
  fi
  printf '%-40s %10s  %s\n' NAME SIZE "MODIFIED (UTC)"
  while IFS=$'\t' read -r ckpt bytes modified; do
    printf '%-40s %10s  %s\n' "$ckpt" "$(human_size "$bytes")" "$modified"
  done <<<"$listing"
  exit 0
fi

require_checkpoint "$name"

mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
if [[ -e "$dest/$name" ]]; then
  ((force)) || die "$dest/$name already exists: remove it or pass --force (FORCE=1 for make)."
fi

tmp_name=".tmp-$name-$$"
tmp_dir="$dest/$tmp_name"
manifest="$dest/$tmp_name.sha256"
cleanup() { rm -rf -- "$tmp_dir" "$manifest"; }
trap cleanup EXIT

echo "copying checkpoint '$name' to $dest/$name ..." >&2
# Read as root (a checkpoint folder made with mkdtemp is 0700), then handed to the calling user so the
# files on the host are theirs.
# shellcheck disable=SC2016 # expanded by the container's shell
compose run --rm --no-deps -T \
  --volume "$dest:/out" --env OUT=/out --env "NAME=$name" --env "TMP_NAME=$tmp_name" \
  --env "OWNER=$(id -u):$(id -g)" \
  training sh -c '
    set -eu
    cd "$CHECKPOINT_DIR/$NAME"
    find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum > "$OUT/$TMP_NAME.sha256"
    cp -R --preserve=timestamps "$CHECKPOINT_DIR/$NAME" "$OUT/$TMP_NAME"
    chown -R "$OWNER" "$OUT/$TMP_NAME" "$OUT/$TMP_NAME.sha256"
  ' || die "copying '$name' out of the volume failed (the error is above)."

expected=$(wc -l <"$manifest")
((expected > 0)) || die "checkpoint '$name' has no files."
copied=$(find "$tmp_dir" -type f | wc -l)
if ((copied != expected)); then
  die "the copy of '$name' has $copied files, the volume has $expected: not kept."
fi
if ! (cd "$tmp_dir" && sha256sum --quiet --strict -c "../$tmp_name.sha256" >&2); then
  die "the copy of '$name' differs from the volume (SHA-256 mismatch above): not kept."
fi

if [[ -e "$dest/$name" ]]; then
  rm -rf -- "${dest:?}/$name"
fi
mv -- "$tmp_dir" "$dest/$name"
mv -- "$manifest" "$dest/$name.sha256"
trap - EXIT
echo "$dest/$name: $expected files, SHA-256 verified (manifest: $dest/$name.sha256)"
