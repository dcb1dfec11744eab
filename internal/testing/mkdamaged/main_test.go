package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/testing/testutil"
)

const committed = "../../../testdata/damaged"

// tree lists what is under dir: path -> "d", "l TARGET", or the content of
// a regular file; the golden files of the store test are left out.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := testutil.WalkRel(dir, func(rel, p string, d fs.DirEntry) error {
		switch base := filepath.Base(p); {
		case rel == ".":
		case base == "fsck.json" || base == "repaired.txt":
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out[rel] = "l " + target
		case d.IsDir():
			out[rel] = "d"
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = string(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// journalContent is what a journal file holds, for comparing two journals
// whose bytes differ: its size, and what can be read from it.
func journalContent(t *testing.T, p string) string {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	out := fmt.Sprintf("size %d\n", fi.Size())
	s, err := journal.SalvageFile(p, time.Second)
	if err != nil {
		return out + "unreadable: " + strings.ReplaceAll(err.Error(), p, "PATH")
	}
	out += fmt.Sprintf("committed %s\n", s.Committed)
	for _, r := range s.Pending {
		out += string(r.Encode()) + "\n"
	}
	var keys []digest.Digest
	for d := range s.Indexes {
		keys = append(keys, d)
	}
	slices.Sort(keys)
	for _, d := range keys {
		out += fmt.Sprintf("index %s %d\n", d, len(s.Indexes[d]))
	}
	db, err := journal.Open(p, journal.Options{ReadOnly: true, LockTimeout: time.Second})
	if err != nil {
		return out + "no read-only open: " + strings.ReplaceAll(err.Error(), p, "PATH")
	}
	defer db.Close()
	refs := map[digest.Digest]journal.Ref{}
	err = db.View(func(tx *journal.Tx) error {
		return tx.ForEachRef(func(d digest.Digest, r journal.Ref) error { refs[d] = r; return nil })
	})
	if err != nil {
		out += "refs: " + err.Error()
	}
	return out + fmt.Sprint(refs)
}

// TestCorpusReproducible: the generator writes exactly the committed corpus
// (journals: the same content), and every committed case is one it writes.
func TestCorpusReproducible(t *testing.T) {
	out := t.TempDir()
	if err := write(out); err != nil {
		t.Fatal(err)
	}
	gen, com := tree(t, out), tree(t, committed)
	var gk, ck []string
	for k := range gen {
		gk = append(gk, k)
	}
	for k := range com {
		ck = append(ck, k)
	}
	slices.Sort(gk)
	slices.Sort(ck)
	if !slices.Equal(gk, ck) {
		t.Fatalf("the generator writes %d entries, testdata/damaged holds %d: run go run ./internal/testing/mkdamaged testdata/damaged\nwritten: %v\ncommitted: %v", len(gk), len(ck), gk, ck)
	}
	for _, k := range gk {
		if strings.Contains(k, ".ocistore/journal.db") { // and the journals kept aside
			a, b := journalContent(t, filepath.Join(out, k)), journalContent(t, filepath.Join(committed, k))
			if a != b {
				t.Errorf("%s holds other content than the generator writes:\n%s\n---\n%s", k, a, b)
			}
			continue
		}
		if gen[k] != com[k] {
			t.Errorf("%s differs from what the generator writes: run go run ./internal/testing/mkdamaged testdata/damaged", k)
		}
	}
	// Every case has its description and golden files.
	for _, c := range Cases() {
		if c.Spec.Description == "" {
			t.Errorf("%s has no description", c.Name)
		}
		for _, g := range []string{"fsck.json", "repaired.txt"} {
			if b, err := os.ReadFile(filepath.Join(committed, c.Name, g)); err != nil || len(bytes.TrimSpace(b)) == 0 {
				t.Errorf("%s/%s: %v (go test ./store -run TestDamagedCorpus -update)", c.Name, g, err)
			}
		}
	}
}
