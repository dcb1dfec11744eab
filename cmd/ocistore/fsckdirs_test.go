package main

import (
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
)

// Directories of the layout that are not directories (issue 14, item 4):
// fsck names each as a not-directory problem (exit 3), every other command
// that needs it fails with an error naming it, and fsck --repair moves it
// aside, never following it: what a symlink leads to stays byte for byte
// as it was and is never opened.

// findingOf returns the finding of kind at path in rep, or fails.
func findingOf(t *testing.T, rep recovery.Report, kind, path string) recovery.Problem {
	t.Helper()
	for _, p := range rep.Problems {
		if p.Kind == kind && p.Path == path {
			return p
		}
	}
	t.Fatalf("no %s finding for %s in %+v", kind, path, rep.Problems)
	return recovery.Problem{}
}

// TestFsckStateDirNotDirectory: .ocistore is a regular file, or a symlink
// to a copy of the state out of the layout (a journal with its records),
// or .ocistore/quarantine is a symlink out of it. fsck reports it (exit 3,
// not-directory, a problem); ls, which needs no .ocistore, still lists;
// a writer refuses with an error naming .ocistore and saying to run fsck
// --repair; fsck --repair moves it aside as it is and adopts the layout
// again (exit 0), after which every command works.
func TestFsckStateDirNotDirectory(t *testing.T) {
	t.Parallel()
	for _, which := range []string{".ocistore file", ".ocistore symlink", ".ocistore/quarantine symlink"} {
		t.Run(which, func(t *testing.T) {
			t.Parallel()
			path, kind, _ := strings.Cut(which, " ")
			if kind == "file" {
				kind = "regular file"
			}
			dir, outside := damagedCase(t, "digest-mismatch-layer")
			elsewhere := t.TempDir()
			switch which {
			case ".ocistore file":
				if err := os.RemoveAll(filepath.Join(dir, path)); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, path), []byte("not a directory\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			case ".ocistore symlink":
				elsewhere = filepath.Join(elsewhere, "state")
				if err := os.Rename(filepath.Join(dir, path), elsewhere); err != nil {
					t.Fatal(err)
				}
				fallthrough
			default:
				if err := os.Symlink(elsewhere, filepath.Join(dir, path)); err != nil {
					t.Fatal(err)
				}
			}
			before := testutil.Snapshot(t, elsewhere)
			watch := testutil.WatchFiles(t, elsewhere)

			r := must(t, 3, "-l", dir, "fsck", "--deep")
			wantContains(t, "stdout", r.stdout, recovery.KindNotDirectory+" "+path+": is a "+kind+", not a directory", recovery.KindDigestMismatch)
			rep := decodeJSON[recovery.Report](t, must(t, 3, "-l", dir, "fsck", "--format", "json"))
			if p := findingOf(t, rep, recovery.KindNotDirectory, path); p.Severity != recovery.SeverityProblem {
				t.Errorf("severity %q, want problem", p.Severity)
			}
			if path == ".ocistore" {
				for _, p := range rep.Problems {
					if p.Kind == recovery.KindJournalMissing || p.Kind == recovery.KindJournalCorrupt || p.Kind == recovery.KindPending {
						t.Errorf("the journal behind .ocistore was looked for: %v", p)
					}
				}
				must(t, 0, "-l", dir, "ls")
				for _, args := range [][]string{{"rm", "app:1"}, {"gc"}, {"recover"}, {"journal"}, {"du"}} {
					r := must(t, 1, append([]string{"-l", dir}, args...)...)
					wantContains(t, "stderr", r.stderr, ".ocistore is a "+kind+", not a directory")
					wantNotContains(t, "stderr", r.stderr, "lstat")
				}
				wantContains(t, "stderr", must(t, 1, "-l", dir, "rm", "app:1").stderr, "run ocistore fsck --repair")
			}

			r = must(t, 0, "-l", dir, "fsck", "--repair", "--deep", "--drop-broken")
			wantContains(t, "stdout", r.stdout, "moved-aside: "+path+" is a "+kind+", not a directory: moved aside as "+path+".corrupt-",
				"quarantined: ", "entry-dropped", "0 problems\n")
			aside, _ := filepath.Glob(filepath.Join(dir, path+".corrupt-*"))
			if len(aside) != 1 {
				t.Fatalf("moved aside: %v", aside)
			}
			if kind == "symlink" {
				if target, err := os.Readlink(aside[0]); err != nil || target != elsewhere {
					t.Errorf("%s -> %q, %v; want the link as it was, to %s", aside[0], target, err, elsewhere)
				}
			} else if b, err := os.ReadFile(aside[0]); err != nil || string(b) != "not a directory\n" {
				t.Errorf("%s holds %q, %v", aside[0], b, err)
			}
			if fi, err := os.Lstat(filepath.Join(dir, path)); err != nil || !fi.IsDir() {
				t.Errorf("%s after the repair: %v, %v", path, fi, err)
			}
			must(t, 0, "-l", dir, "fsck", "--deep")
			must(t, 0, "-l", dir, "rm", "app:1")

			watch.Check(t) // what the link leads to was never opened
			if after := testutil.Snapshot(t, elsewhere); !maps.Equal(before, after) {
				t.Errorf("the files behind the link changed:\n%v\nwere\n%v", after, before)
			}
			outside()
		})
	}
}

// TestFsckBlobDirSymlink: blobs/ or blobs/sha256 is a symlink out of the
// layout, to a copy of the blobs. fsck reports it (exit 3, not exit 1 with
// os.Root's "path escapes from parent") and checks no blob; every command
// that opens the layout fails naming it; --repair --drop-broken refuses
// before changing anything (every image would go); fsck --repair moves the
// link to the quarantine folder as it is and makes an empty directory:
// every image is then broken (exit 3), and --drop-broken --force removes
// them. The copy behind the link is never opened and stays as it was.
func TestFsckBlobDirSymlink(t *testing.T) {
	t.Parallel()
	for _, which := range []string{"blobs", "blobs/sha256"} {
		t.Run(which, func(t *testing.T) {
			t.Parallel()
			dir, outside := damagedCase(t, "clean")
			elsewhere := filepath.Join(t.TempDir(), "blobs")
			if err := os.Rename(filepath.Join(dir, which), elsewhere); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(elsewhere, filepath.Join(dir, which)); err != nil {
				t.Fatal(err)
			}
			before := testutil.Snapshot(t, elsewhere)
			watched := []string{elsewhere}
			if which == "blobs" {
				watched = append(watched, filepath.Join(elsewhere, "sha256"))
			}
			watch := testutil.WatchFiles(t, watched...)

			r := must(t, 3, "-l", dir, "fsck", "--deep")
			wantContains(t, "stdout", r.stdout, recovery.KindNotDirectory+" "+which+": is a symlink, not a directory", "4 images, 0 blobs, ")
			wantNotContains(t, "stdout", r.stdout, recovery.KindDangling, recovery.KindNotRegular, recovery.KindRefcount)
			rep := decodeJSON[recovery.Report](t, must(t, 3, "-l", dir, "fsck", "--format", "json"))
			if p := findingOf(t, rep, recovery.KindNotDirectory, which); p.Severity != recovery.SeverityProblem || len(rep.Problems) != 1 {
				t.Errorf("findings %+v", rep.Problems)
			}
			for _, args := range [][]string{{"ls"}, {"inspect", "app:1"}, {"rm", "app:1"}, {"gc"}, {"du"}} {
				r := must(t, 1, append([]string{"-l", dir}, args...)...)
				wantContains(t, "stderr", r.stderr, which+" is a symlink, not a directory: run ocistore fsck --repair")
			}

			state := testutil.Snapshot(t, dir)
			r = must(t, 1, "-l", dir, "fsck", "--repair", "--drop-broken")
			wantContains(t, "stderr", r.stderr, "--drop-broken would remove every image", "nothing was changed")
			if after := testutil.Snapshot(t, dir); !maps.Equal(state, after) {
				t.Errorf("a refused repair changed the layout:\n%v\nwas\n%v", after, state)
			}

			r = must(t, 3, "-l", dir, "fsck", "--repair")
			q := ".ocistore/quarantine/" + strings.ReplaceAll(which, "/", "-")
			wantContains(t, "stdout", r.stdout, "quarantined: "+which+" is a symlink, not a directory: moved to "+q+", and an empty directory made in its place",
				"broken app:1 ", "broken app:2 ", "broken tool:latest ", "broken multi:1 ")
			if target, err := os.Readlink(filepath.Join(dir, q)); err != nil || target != elsewhere {
				t.Errorf("%s -> %q, %v; want the link as it was, to %s", q, target, err, elsewhere)
			}
			if ents, err := os.ReadDir(filepath.Join(dir, which)); err != nil || len(ents) != 0 {
				t.Errorf("%s after the repair: %v, %v; want an empty directory", which, ents, err)
			}
			rep = decodeJSON[recovery.Report](t, must(t, 3, "-l", dir, "fsck", "--format", "json"))
			if p := findingOf(t, rep, recovery.KindBlobsElsewhere, "blobs"); p.Severity != recovery.SeverityProblem {
				t.Errorf("after the repair: %+v", rep.Problems)
			}
			r = must(t, 0, "-l", dir, "fsck", "--repair", "--drop-broken", "--force")
			wantContains(t, "stdout", r.stdout, "entry-dropped txn ", "after repair:\n0 images, 0 blobs, ", "0 problems\n")
			must(t, 0, "-l", dir, "ls")

			watch.Check(t) // what the link leads to was never opened
			if after := testutil.Snapshot(t, elsewhere); !maps.Equal(before, after) {
				t.Errorf("the blobs behind the link changed:\n%v\nwere\n%v", after, before)
			}
			outside()
		})
	}
}
