#!/bin/sh
# make-tool-layouts.sh regenerates the two layouts of this directory that real
# tools write, from a few small local files (no network):
#
#   umoci/   umoci init, new, insert (three images over one shared base
#            layer), tag (a second tag on one manifest), gc
#   skopeo/  skopeo copy oci:umoci:TAG oci:skopeo:TAG of two of those images,
#            then a copy of a third image onto an existing tag: skopeo
#            leaves the manifest that tag named as an untagged entry
#
# Run it from anywhere: sh testdata/layouts/make-tool-layouts.sh
# It needs umoci and skopeo (Debian: apt-get install umoci skopeo; the corpus
# was made with umoci 0.4.7 and skopeo 1.9.3) and replaces umoci/ and skopeo/
# here. The output is committed: the tests never run these tools for the
# corpus. Timestamps and file modification times are pinned, so that a rerun
# with the same tool versions gives the same bytes; other versions may write
# other bytes (and digests), which the tests do not hardcode.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
for tool in umoci skopeo; do
	command -v "$tool" >/dev/null 2>&1 || { echo "$0: $tool is not installed" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

created=2024-01-01T00:00:00Z
src=$work/src
mkdir "$src"
for f in base one two; do
	echo "$f" >"$src/$f.txt"
	touch -d "$created" "$src/$f.txt"
done

# umoci: base (one layer), app1 and app2 (the base layer plus one own layer
# each), latest (a second tag of app1's manifest).
u=$work/umoci
umoci init --layout "$u"
umoci new --image "$u:base"
umoci config --image "$u:base" --no-history --created "$created" --author ocistore-fixtures
ins() { # ins FROM TAG FILE: FILE on top of FROM, saved as TAG ("" = FROM)
	if [ -n "$2" ]; then
		umoci insert --image "$u:$1" --tag "$2" --history.created "$created" "$src/$3" "/$3"
	else
		umoci insert --image "$u:$1" --history.created "$created" "$src/$3" "/$3"
	fi
}
ins base "" base.txt
ins base app1 one.txt
ins base app2 two.txt
umoci tag --image "$u:app1" latest
# insert rewrote base in place: its old manifest and config are garbage.
umoci gc --layout "$u"

# skopeo: app1 and app2 copied as they are, then base copied onto app1.
s=$work/skopeo
skopeo --insecure-policy copy -q "oci:$u:app1" "oci:$s:app1"
skopeo --insecure-policy copy -q "oci:$u:app2" "oci:$s:app2"
skopeo --insecure-policy copy -q "oci:$u:base" "oci:$s:app1"

for l in umoci skopeo; do
	rm -rf "${here:?}/$l"
	cp -R "$work/$l" "$here/$l"
done
echo "wrote $here/umoci and $here/skopeo"
