// Command mkfixtures writes the synthetic layouts of testdata/layouts: small
// OCI image layouts shaped the way other tools (Docker, BuildKit, oras, ...)
// write them, for the fixture tests of package store.
//
//	go run ./internal/cmd/mkfixtures testdata/layouts
//
// Every layout it knows is removed and written again under DIR; other
// directories (the layouts that real tools wrote, see make-tool-layouts.sh)
// are left alone. The output is deterministic: fixed contents, fixed
// timestamps, no randomness, and layers gzipped without compression (stored
// blocks), so that no change of the compressor can change a digest. The
// files are committed; store's fixture tests check that this command still
// writes exactly them.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/ocistore/ocistore/internal/gen"
)

func main() { gen.Main("mkfixtures", "testdata/layouts", write) }

// write replaces every generated layout under dir.
func write(dir string) error {
	for _, l := range Layouts() {
		root := filepath.Join(dir, l.Name)
		if err := os.RemoveAll(root); err != nil {
			return err
		}
		paths := make([]string, 0, len(l.Files))
		for p := range l.Files {
			paths = append(paths, p)
		}
		sort.Strings(paths)
		for _, p := range paths {
			full := filepath.Join(root, filepath.FromSlash(p))
			if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(full, l.Files[p], 0o644); err != nil {
				return err
			}
		}
		fmt.Printf("wrote %s (%d files)\n", root, len(paths))
	}
	return nil
}
