package protocol

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
)

// lazyEnv is an empty layout with a journal that counted it.
func lazyEnv(t *testing.T) (Env, *journal.DB, string) {
	t.Helper()
	dir := t.TempDir()
	for name, body := range map[string]string{
		layout.LayoutFile: `{"imageLayoutVersion":"1.0.0"}`,
		layout.IndexFile:  `{"schemaVersion":2,"manifests":[],"annotations":{"a":"1"}}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, ".ocistore"), 0o755); err != nil {
		t.Fatal(err)
	}
	fsys, err := fsio.OpenOS(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close() })
	db, err := journal.Open(filepath.Join(dir, ".ocistore", "journal.db"), journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	env := Env{FS: fsys, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if _, err := Run(context.Background(), env, db, nil); err != nil { // counts it, records the stamp
		t.Fatal(err)
	}
	return env, db, dir
}

func withRacyWindow(t *testing.T, d time.Duration) {
	old := racyWindow
	racyWindow = d
	t.Cleanup(func() { racyWindow = old })
}

func committed(t *testing.T, db *journal.DB) string {
	t.Helper()
	var d string
	if err := db.View(func(tx *journal.Tx) error { d = string(tx.IndexDigest()); return nil }); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestRunLazyTrustsTheStamp: with no pending record and index.json still
// the file the journal counted, RunLazy does not read it.
func TestRunLazyTrustsTheStamp(t *testing.T) {
	withRacyWindow(t, 0)
	env, db, _ := lazyEnv(t)
	st, err := RunLazy(context.Background(), env, db)
	if err != nil {
		t.Fatal(err)
	}
	if st.Index != nil || st.Bytes != nil {
		t.Error("RunLazy read index.json although its stamp is the one the journal recorded")
	}
	if string(st.Digest) != committed(t, db) || st.Stamp.IsZero() {
		t.Errorf("state %s %+v, want the committed digest and a stamp", st.Digest, st.Stamp)
	}
}

// TestRunLazyDetectsChanges: another tool replacing index.json (rename)
// or rewriting it in place with the same size gives it another stamp;
// RunLazy reads it and reconciles.
func TestRunLazyDetectsChanges(t *testing.T) {
	for name, write := range map[string]func(dir string, b []byte) error{
		"rename": func(dir string, b []byte) error {
			tmp := filepath.Join(dir, "index.tmp")
			if err := os.WriteFile(tmp, b, 0o644); err != nil {
				return err
			}
			return os.Rename(tmp, filepath.Join(dir, layout.IndexFile))
		},
		"in-place": func(dir string, b []byte) error {
			return os.WriteFile(filepath.Join(dir, layout.IndexFile), b, 0o644) // O_TRUNC, same inode
		},
	} {
		t.Run(name, func(t *testing.T) {
			withRacyWindow(t, 0)
			env, db, dir := lazyEnv(t)
			time.Sleep(20 * time.Millisecond) // past a coarse time-stamp tick
			changed := []byte(`{"schemaVersion":2,"manifests":[],"annotations":{"a":"2"}}`)
			if err := write(dir, changed); err != nil {
				t.Fatal(err)
			}
			st, err := RunLazy(context.Background(), env, db)
			if err != nil {
				t.Fatal(err)
			}
			if st.Index == nil || st.Digest != layout.Sum(changed) {
				t.Fatalf("RunLazy trusted a changed index.json: digest %s, want %s", st.Digest, layout.Sum(changed))
			}
			if string(st.Digest) != committed(t, db) {
				t.Errorf("journal still commits %s", committed(t, db))
			}
		})
	}
}

// TestRunLazyRacyStamp: a stamp taken within the racy window of the file's
// change time is not trusted by itself: the file is hashed. Forge the
// worst case: the journal holds index.json's current stamp but another
// digest (what a same-size rewrite within one time-stamp tick would leave).
func TestRunLazyRacyStamp(t *testing.T) {
	env, db, dir := lazyEnv(t)
	changed := []byte(`{"schemaVersion":2,"manifests":[],"annotations":{"a":"3"}}`)
	if err := os.WriteFile(filepath.Join(dir, layout.IndexFile), changed, 0o644); err != nil {
		t.Fatal(err)
	}
	old := committed(t, db)
	if err := db.Update(func(tx *journal.Tx) error {
		return setStamp(tx, tx.IndexDigest(), fsio.StampFile(env.FS, layout.IndexFile))
	}); err != nil {
		t.Fatal(err)
	}
	st, err := RunLazy(context.Background(), env, db)
	if err != nil {
		t.Fatal(err)
	}
	if st.Digest != layout.Sum(changed) || string(st.Digest) == old {
		t.Fatalf("RunLazy trusted a racy stamp: digest %s, want %s", st.Digest, layout.Sum(changed))
	}

	// The same forgery outside the racy window is trusted: the window is
	// what protects against it (so this test fails if it is removed).
	env2, db2, dir2 := lazyEnv(t)
	withRacyWindow(t, 0)
	if err := os.WriteFile(filepath.Join(dir2, layout.IndexFile), changed, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := db2.Update(func(tx *journal.Tx) error {
		return setStamp(tx, tx.IndexDigest(), fsio.StampFile(env2.FS, layout.IndexFile))
	}); err != nil {
		t.Fatal(err)
	}
	st, err = RunLazy(context.Background(), env2, db2)
	if err != nil {
		t.Fatal(err)
	}
	if st.Index != nil {
		t.Error("with no racy window the forged stamp should have been trusted")
	}
}
