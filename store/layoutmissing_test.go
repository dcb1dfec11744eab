package store_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ocistore/ocistore/store"
)

// TestOpenLayoutMissing: a layout directory that does not exist is
// ErrLayoutMissing (still ErrNotLayout) for a reader, for NoCreate and with
// a shared blob directory, and nothing is created; an empty directory is
// ErrNotLayout but not ErrLayoutMissing.
func TestOpenLayoutMissing(t *testing.T) {
	ctx := context.Background()
	for name, o := range map[string]store.Options{
		"NoCreate":                  {NoCreate: true},
		"ReadOnly":                  {ReadOnly: true},
		"NoCreate, shared blob dir": {NoCreate: true, SharedBlobDir: t.TempDir()},
	} {
		dir := filepath.Join(t.TempDir(), "missing")
		_, err := store.Open(ctx, dir, &o)
		if !errors.Is(err, store.ErrLayoutMissing) || !errors.Is(err, store.ErrNotLayout) {
			t.Errorf("%s: Open(missing) = %v, want ErrLayoutMissing and ErrNotLayout", name, err)
		}
		if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: Open(missing) created the directory: %v", name, err)
		}
	}
	_, err := store.Open(ctx, t.TempDir(), &store.Options{NoCreate: true})
	if !errors.Is(err, store.ErrNotLayout) || errors.Is(err, store.ErrLayoutMissing) {
		t.Errorf("Open(empty dir, NoCreate) = %v, want ErrNotLayout, not ErrLayoutMissing", err)
	}
}
