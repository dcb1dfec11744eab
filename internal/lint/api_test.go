package lint

import (
	"go/ast"
	"go/doc"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/ocistore/ocistore"

// parseDir parses the non-test Go files of dir (relative to the module
// root).
func parseDir(t *testing.T, root, dir string) (*token.FileSet, []*ast.File) {
	t.Helper()
	fset := token.NewFileSet()
	ents, err := os.ReadDir(filepath.Join(root, dir))
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(root, dir, e.Name()), nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	return fset, files
}

// TestCLIImportsStoreAndRecovery: the CLI is built on the public API only
// (package store, package recovery's report types, store/orasstore, the
// oras-go target pull, push and copy use, and server, serve's registry),
// as any other program would be; and so is the server, on store alone.
func TestCLIImportsStoreAndRecovery(t *testing.T) {
	root := moduleRoot(t)
	for dir, allowed := range map[string][]string{
		"cmd/ocistore": {"store", "recovery", "store/orasstore", "server"},
		"server":       {"store"},
	} {
		fset, files := parseDir(t, root, dir)
		if len(files) == 0 {
			t.Fatalf("no Go files in %s", dir)
		}
		for _, f := range files {
			for _, imp := range f.Imports {
				p, _ := strconv.Unquote(imp.Path.Value)
				if !strings.HasPrefix(p, module+"/") {
					continue
				}
				if !slices.Contains(allowed, strings.TrimPrefix(p, module+"/")) {
					t.Errorf("%s: %s imports %s: it uses %s only", fset.Position(imp.Pos()), dir, p, strings.Join(allowed, ", "))
				}
			}
		}
	}
}

// readOnly are the exported functions and methods of the public packages
// recovery and journal: none may change a layout or a journal (every change
// goes through package store, under its writer lock). A new one is added
// here only with a test that it changes nothing: journal.Read has
// TestReadChangesNothing.
var readOnly = map[string][]string{
	"recovery": {"DeepStats.String", "Problem.IsNotice", "Problem.String", "Report.Count", "Report.OK", "SeverityOf"},
	"journal":  {"Read"},
}

// TestPublicPackagesChangeNothing lists the exported functions of recovery
// and journal: each must be one that only reads.
func TestPublicPackagesChangeNothing(t *testing.T) {
	root := moduleRoot(t)
	for pkg, allowed := range readOnly {
		fset, files := parseDir(t, root, pkg)
		d, err := doc.NewFromFiles(fset, files, module+"/"+pkg)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range d.Funcs {
			got = append(got, f.Name)
		}
		for _, ty := range d.Types {
			for _, f := range ty.Funcs {
				got = append(got, f.Name)
			}
			for _, m := range ty.Methods {
				got = append(got, ty.Name+"."+m.Name)
			}
		}
		slices.Sort(got)
		for _, name := range got {
			if !slices.Contains(allowed, name) {
				t.Errorf("%s exports %s: package %s may only export functions that change nothing (every change goes through store, under its writer lock); if it only reads, add it to readOnly with a test that says so", pkg, name, pkg)
			}
		}
		for _, name := range allowed {
			if !slices.Contains(got, name) {
				t.Errorf("readOnly lists %s.%s, which %s no longer exports", pkg, name, pkg)
			}
		}
	}
}

// TestFoundationImportsNoRig: the foundation packages (internal/fsio,
// layout, refcount, journal, protocol, fsck, crash, errdef) and the public
// ones import no test rig (internal/testing/...): arrows point down.
func TestFoundationImportsNoRig(t *testing.T) {
	root := moduleRoot(t)
	err := walkFiles(root, []string{"bench", "internal/testing", "internal/cmd", "fuzz"}, func(rel, p string) error {
		if !isSource(p) {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			ip, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(ip, module+"/internal/testing/") {
				t.Errorf("%s imports the test rig %s", rel, ip)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// walkFiles calls fn with every file under root, by its path p and its
// path rel relative to root, slash-separated. It skips hidden
// directories, testdata, and the directories (rel) of skip.
func walkFiles(root string, skip []string, fn func(rel, p string) error) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || slices.Contains(skip, rel)) {
				return filepath.SkipDir
			}
			return nil
		}
		return fn(rel, p)
	})
}

// isSource reports whether p is a Go file other than a test.
func isSource(p string) bool {
	return strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go")
}
