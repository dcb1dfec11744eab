// Command mkdamaged writes the damaged-layout corpus of testdata/damaged:
// one small OCI image layout per kind of damage that `ocistore fsck` must
// find and `ocistore fsck --repair` must repair (or report), each in
// DIR/<case>/layout with DIR/<case>/case.json (what the damage is, the
// repair flags the golden test uses).
//
//	go run ./internal/testing/mkdamaged testdata/damaged
//
// Every case it knows is removed and written again; the golden files
// (fsck.json, repaired.txt) are left alone: the golden test in package store
// writes them (go test ./store -run TestDamagedCorpus -update). The output is
// deterministic: fixed contents, no clock, no randomness. Journals are
// written through package journal with fixed times; their bytes still vary
// from run to run (bbolt lays pages out in map order), so the test of this
// command compares what they hold.
//
// Some damage cannot be committed as files: a 2 GiB sparse index.json is
// described in case.json ("sparseIndex") and made by the test. Symlinks in
// the corpus point at ../../../canary, a file the test puts next to the
// layout copy: nothing may ever read, write or remove it.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ocistore/ocistore/internal/gen"
)

func main() { gen.Main("mkdamaged", "testdata/damaged", write) }

// write replaces the layout and case.json of every case under dir.
func write(dir string) error {
	names := map[string]bool{}
	for _, c := range Cases() {
		if names[c.Name] {
			return fmt.Errorf("case %s twice", c.Name)
		}
		names[c.Name] = true
		root := filepath.Join(dir, c.Name)
		lay := filepath.Join(root, "layout")
		if err := os.RemoveAll(lay); err != nil {
			return err
		}
		if err := os.MkdirAll(lay, 0o755); err != nil {
			return err
		}
		if err := c.Build(lay); err != nil {
			return fmt.Errorf("%s: %w", c.Name, err)
		}
		spec, err := json.MarshalIndent(c.Spec, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(root, "case.json"), append(spec, '\n'), 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("wrote %d cases under %s\n", len(names), dir)
	return nil
}
