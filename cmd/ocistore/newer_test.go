package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
)

func journalSum(t *testing.T, path string) string {
	t.Helper()
	h := sha256.Sum256(readFile(t, path))
	return hex.EncodeToString(h[:])
}

func journalAsides(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, protocol.JournalFile+".corrupt-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestNewerJournalCLI: with a journal that a newer ocistore wrote (schema
// 99), every command refuses the layout, exit 1, saying both versions and
// what to do, and leaves the journal byte for byte where it was: fsck
// reports it as journal-newer (exit 3); fsck --repair refuses it unless
// --rebuild-journal, which rebuilds it.
func TestNewerJournalCLI(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	src := newFixture(t) // a layout to import from
	path := filepath.Join(f.dir, protocol.JournalFile)
	bdb, err := bolt.Open(path, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], 99)
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), v[:])
	})
	if cerr := bdb.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	before := journalSum(t, path)
	for _, args := range [][]string{
		{"init"}, {"ls"}, {"inspect", "a"}, {"du"}, {"journal"}, {"recover"},
		{"gc", "--grace", "0s"}, {"prune", "--older-than", "1s"}, {"rm", "a"},
		{"tag", "a", "c"}, {"untag", "a2"}, {"import", src.dir, "b"},
		{"fsck", "--repair"}, {"fsck", "--repair", "--drop-broken"},
	} {
		r := cli(t, append([]string{"-l", f.dir}, args...)...)
		if r.code != exitError {
			t.Errorf("want exit 1, got:\n%s", r)
		}
		wantContains(t, args[0]+" stderr", r.stderr, fmt.Sprintf("format version 99, this ocistore reads up to %d: upgrade ocistore", journal.SchemaVersion))
		if journalSum(t, path) != before {
			t.Fatalf("ocistore %v changed the journal", args)
		}
		if a := journalAsides(t, f.dir); len(a) != 0 {
			t.Fatalf("ocistore %v moved the journal aside: %v", args, a)
		}
	}
	r := must(t, exitProblems, "-l", f.dir, "fsck")
	wantContains(t, "fsck", r.stdout, "journal-newer .ocistore/journal.db", "format version 99")
	wantNotContains(t, "fsck", r.stdout, "journal-corrupt")
	if journalSum(t, path) != before {
		t.Fatal("fsck changed the journal")
	}

	must(t, exitUsage, "-l", f.dir, "fsck", "--rebuild-journal")
	r = must(t, exitOK, "-l", f.dir, "fsck", "--repair", "--rebuild-journal")
	wantContains(t, "fsck --repair --rebuild-journal", r.stdout, "journal-rebuilt: ", "format version 99", "pinned: ")
	if a := journalAsides(t, f.dir); len(a) != 1 || journalSum(t, a[0]) != before {
		t.Fatalf("the newer journal was not kept aside as it was: %v", a)
	}
	r = must(t, exitOK, "-l", f.dir, "ls")
	wantContains(t, "ls after the rebuild", r.stdout, "multi")
}

// TestRebuildKeepsLeaseCLI is issue 12's reproduction: a command that finds
// the journal corrupt rebuilds it keeping the live lease it can still read,
// and the gc that follows keeps the leased blob. When the leases cannot be
// read, gc and prune free nothing and say why.
func TestRebuildKeepsLeaseCLI(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	s := testutil.Open(t, f.dir)
	lease, err := s.Lease(ctx, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("a layer of a pull in progress")
	held := testutil.Blob(content, v1.MediaTypeImageLayer)
	if err := s.PutBlob(lease.Context(ctx), held, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	testutil.Close(t, s)
	path := filepath.Join(f.dir, protocol.JournalFile)
	// Scribble on the freelist pages (4 KiB pages): the journal no longer
	// opens read-write; salvage still reads its leases.
	b := readFile(t, path)
	for _, meta := range []int{0, 4096} {
		pg := int(binary.LittleEndian.Uint64(b[meta+16+32:]))
		copy(b[pg*4096:(pg+1)*4096], bytes.Repeat([]byte{0xA5}, 4096))
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	must(t, exitOK, "-l", f.dir, "tag", "a", "c")
	if len(journalAsides(t, f.dir)) != 1 {
		t.Fatal("the corrupt journal was not rebuilt")
	}
	r := must(t, exitOK, "-l", f.dir, "gc", "--grace", "0s")
	wantContains(t, "gc", r.stdout, "removed 0 blobs", "kept 1 leased")
	wantNotContains(t, "gc", r.stderr, "nothing freed")
	if !exists(f.blobPath(held.Digest)) {
		t.Fatal("gc after the rebuild deleted a leased blob")
	}

	// A journal with no database at all: its leases are unknown.
	if err := os.WriteFile(path, bytes.Repeat([]byte("not a bbolt database "), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	r = must(t, exitOK, "-l", f.dir, "gc", "--grace", "0s")
	wantContains(t, "gc", r.stdout, "removed 0 blobs")
	wantContains(t, "gc", r.stderr, "nothing freed: journal rebuilt at ", "without its leases; nothing is freed until ")
	// A prune is for space: during the pin it removes nothing either.
	r = must(t, exitOK, "-l", f.dir, "prune", "--older-than", "1ns", "--filter", "ref=b")
	wantContains(t, "prune", r.stdout, "removed 0 references", "freed 0 blobs")
	wantContains(t, "prune", r.stderr, "nothing freed: journal rebuilt at ")
	if !exists(f.blobPath(held.Digest)) {
		t.Fatal("a blob was deleted during the pin")
	}
	for d := range graphOf(t, f.dir, f.b) {
		if !exists(f.blobPath(d)) {
			t.Fatalf("prune during the pin deleted %s", d)
		}
	}
}
