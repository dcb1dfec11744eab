// Package lint holds style rules of the project that an ordinary test can
// enforce.
package lint

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mutators are the calls that change a file system or make it durable. Only
// internal/fsio may make them: the durability rules live in one place, and a
// test file system can stand in for the real one.
var mutators = map[string]bool{
	"os.Rename": true, "os.Remove": true, "os.RemoveAll": true, "os.WriteFile": true,
	"os.Create": true, "os.CreateTemp": true, "os.Mkdir": true, "os.MkdirAll": true,
	"os.OpenFile": true, "os.Truncate": true, "os.Chmod": true, "os.Symlink": true, "os.Link": true,
	"renameio.WriteFile": true, "renameio.NewPendingFile": true, "renameio.TempFile": true,
	"syscall.Fsync": true, "syscall.Fdatasync": true, "unix.Fsync": true, "unix.Fdatasync": true,
}

// allowed are the packages that may mutate files directly: the I/O package,
// the tools and test helpers that write fixture layouts the way other tools
// do, and the power-cut rig that builds real file systems (none is the
// engine).
var allowed = []string{"internal/fsio/", "internal/gen/", "internal/cmd/", "internal/testing/"}

func TestFileMutationsOnlyInFsio(t *testing.T) {
	root := moduleRoot(t)
	fset := token.NewFileSet()
	err := walkFiles(root, []string{"bench"}, func(rel, p string) error {
		if !isSource(p) {
			return nil
		}
		for _, a := range allowed {
			if strings.HasPrefix(rel, a) {
				return nil
			}
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if id, ok := sel.X.(*ast.Ident); ok && mutators[id.Name+"."+sel.Sel.Name] {
				t.Errorf("%s: %s.%s outside internal/fsio: route it through fsio.FS", fset.Position(sel.Pos()), id.Name, sel.Sel.Name)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func moduleRoot(t *testing.T) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test")
		}
		dir = parent
	}
}
