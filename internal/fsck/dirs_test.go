package fsck_test

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsck"
	"github.com/ocistore/ocistore/internal/gen"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
)

// TestNotDirectories: .ocistore (a file, or a symlink out of the layout),
// blobs/ or blobs/sha256 (a symlink out of the layout, or a file) is not a
// directory. The check reports it as a not-directory problem at its path,
// without an error, never looking behind it; OpenLayout refuses it
// (ErrCorrupt, naming it and fsck --repair), but to a reader .ocistore;
// RepairFiles moves it aside as it is (.ocistore next to itself, the blob
// directories to the quarantine folder, with an empty directory in their
// place), and what a symlink led to is unchanged.
func TestNotDirectories(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		path    string
		symlink bool
		moved   string // where the repair moves it, a glob
	}{
		{".ocistore", false, ".ocistore.corrupt-*"},
		{".ocistore", true, ".ocistore.corrupt-*"},
		{"blobs", true, ".ocistore/quarantine/blobs"},
		{"blobs/sha256", true, ".ocistore/quarantine/blobs-sha256"},
		{"blobs/sha256", false, ".ocistore/quarantine/blobs-sha256"},
	} {
		kind := map[bool]string{false: "a regular file", true: "a symlink"}[c.symlink]
		t.Run(c.path+" "+kind, func(t *testing.T) {
			dir := adopted(t, gen.Spec{Images: 3, LayerSize: 512, BaseSets: 1})
			p := filepath.Join(dir, filepath.FromSlash(c.path))
			elsewhere := filepath.Join(t.TempDir(), "elsewhere")
			if c.symlink {
				if err := os.Rename(p, elsewhere); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(elsewhere, p); err != nil {
					t.Fatal(err)
				}
			} else {
				if err := os.RemoveAll(p); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte("x\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Mkdir(elsewhere, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			before := testutil.Snapshot(t, elsewhere)
			watch := testutil.WatchFiles(t, elsewhere)

			rep, err := fsck.CheckDir(ctx, dir, &recovery.CheckOptions{LockTimeout: time.Second, Deep: true})
			if err != nil {
				t.Fatalf("check: %v", err)
			}
			var found bool
			for _, p := range rep.Problems {
				switch {
				case p.Kind == recovery.KindNotDirectory && p.Path == c.path:
					found = strings.HasPrefix(p.Detail, "is "+kind+", not a directory") && p.Severity == recovery.SeverityProblem
				case c.path == ".ocistore" && (p.Kind == recovery.KindJournalMissing || p.Kind == recovery.KindJournalCorrupt):
					t.Errorf("the journal in .ocistore was looked for: %v", p)
				case c.path != ".ocistore" && (p.Kind == recovery.KindDangling || p.Kind == recovery.KindNotRegular || p.Kind == recovery.KindRefcount):
					t.Errorf("a blob behind %s was checked: %v", c.path, p)
				}
			}
			if !found || rep.OK() {
				t.Fatalf("not reported as a not-directory problem: %v", rep.Problems)
			}

			_, err = protocol.OpenLayout(dir, protocol.LayoutOptions{NoCreate: true})
			if !errors.Is(err, errdef.ErrCorrupt) || !strings.Contains(err.Error(), c.path+" is "+kind+", not a directory: run ocistore fsck --repair") {
				t.Errorf("OpenLayout = %v", err)
			}
			ro, err := protocol.OpenLayout(dir, protocol.LayoutOptions{ReadOnly: true})
			if c.path == ".ocistore" {
				if err != nil {
					t.Errorf("read-only OpenLayout: %v (a reader needs no .ocistore)", err)
				} else {
					ro.Close()
				}
			} else if !errors.Is(err, errdef.ErrCorrupt) {
				t.Errorf("read-only OpenLayout = %v", err)
			}
			if shared, err := protocol.SharedBlobDirOf(dir); err != nil || shared != "" {
				t.Errorf("SharedBlobDirOf = %q, %v", shared, err)
			}

			l, err := protocol.OpenLayout(dir, protocol.LayoutOptions{NoCreate: true, AsItIs: true})
			if err != nil {
				t.Fatal(err)
			}
			var res fsck.Repaired
			ok, err := fsck.RepairFiles(ctx, l, fsck.FilesOptions{LockTimeout: time.Second}, &res)
			l.Close()
			if err != nil || !ok {
				t.Fatalf("repair: %v, %v", ok, err)
			}
			if len(res.Actions) == 0 || !strings.HasPrefix(res.Actions[0].Detail, c.path+" is "+kind+", not a directory: moved") {
				t.Errorf("actions %+v", res.Actions)
			}
			moved, _ := filepath.Glob(filepath.Join(dir, filepath.FromSlash(c.moved)))
			if len(moved) != 1 {
				t.Fatalf("moved aside: %v", moved)
			}
			if c.symlink {
				if target, err := os.Readlink(moved[0]); err != nil || target != elsewhere {
					t.Errorf("%s -> %q, %v", moved[0], target, err)
				}
			} else if b, err := os.ReadFile(moved[0]); err != nil || string(b) != "x\n" {
				t.Errorf("%s holds %q, %v", moved[0], b, err)
			}
			if fi, err := os.Lstat(p); err != nil || !fi.IsDir() {
				t.Errorf("%s after the repair: %v, %v", c.path, fi, err)
			}
			fsys, err := protocol.OpenLayout(dir, protocol.LayoutOptions{NoCreate: true})
			if err != nil {
				t.Fatalf("open after the repair: %v", err)
			}
			if bad, err := protocol.NotDirectories(fsys.FS); err != nil || len(bad) != 0 {
				t.Errorf("after the repair: %v, %v", bad, err)
			}
			fsys.Close()

			watch.Check(t)
			if after := testutil.Snapshot(t, elsewhere); !maps.Equal(before, after) {
				t.Errorf("what the link leads to changed:\n%v\nwas\n%v", after, before)
			}
		})
	}
}
