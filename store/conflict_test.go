package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/store"
)

// TestConcurrentExternalWrite: another tool (which takes no lock) rewrites
// index.json while a delete is between its commit point and its unlinks, and
// its new index still uses the image being deleted. The delete must unlink
// nothing and say so (ErrConflict); the next open rolls the record back.
func TestConcurrentExternalWrite(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	before := fixture(t, dir)
	victim := before["img2"]
	filesBefore := files(t, dir)

	crash.Arm(crash.IndexSynced, 1, func(string) {
		// What skopeo does: read index.json, add an entry, write it in place.
		p := filepath.Join(dir, "index.json")
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Error(err)
			return
		}
		entry := fmt.Sprintf(`,{"mediaType":%q,"digest":%q,"size":%d,"annotations":{"org.opencontainers.image.ref.name":"written-meanwhile"}}]`,
			v1.MediaTypeImageManifest, victim, blobSize(t, dir, victim))
		if err := os.WriteFile(p, []byte(strings.Replace(string(raw), "]", entry, 1)), 0o644); err != nil {
			t.Error(err)
		}
	})
	defer crash.Disarm()

	s, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Delete(ctx, "img2")
	s.Close()
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("delete during an external write: %v, want ErrConflict", err)
	}
	// Every blob is still there (the external index needs the victim's).
	if got := files(t, dir); len(got) != len(filesBefore) {
		t.Fatalf("blobs were unlinked: %d files, had %d", len(got), len(filesBefore))
	}
	got := tags(t, dir) // recovery: roll back, recount
	if got["written-meanwhile"] != victim {
		t.Fatalf("external tag lost: %v", got)
	}
	checkClean(t, dir, false)
}
