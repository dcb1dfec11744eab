package lint

import (
	"bufio"
	"fmt"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// designFile is the design document, relative to the module root. Comments
// and Markdown cite its sections as "DESIGN.md §4.2": every cited section
// must have a heading there ("## §4 ...", "### §4.2 ..."), or the
// citation is dangling.
const designFile = "docs/DESIGN.md"

var (
	// mention is a mention of the design document by name.
	mention = regexp.MustCompile(`DESIGN\.md`)
	// sectioned is a mention followed by a section number.
	sectioned = regexp.MustCompile(`^DESIGN\.md\s*§\s*[0-9]`)
	// section is a section number: §4, §4.2.
	section = regexp.MustCompile(`§\s*([0-9]+(?:\.[0-9]+)*)`)
	// heading is a heading of the design document that numbers a section.
	heading = regexp.MustCompile(`^#{1,6}\s+§([0-9]+(?:\.[0-9]+)*)(?:\s|$)`)
)

// citation is one reference to the design document.
type citation struct {
	line    int    // counted from 0 within the text it was found in
	section string // "" when the document is named without a section
}

// citations finds the references to the design document in text (one Go
// comment group, or one paragraph of Markdown): each mention of DESIGN.md
// that no section number follows, and every section number from the first
// mention on, so that "DESIGN.md §7.2 and §8.1" cites both. A section
// number before any mention is someone else's.
func citations(text string) []citation {
	first := mention.FindStringIndex(text)
	if first == nil {
		return nil
	}
	lineOf := func(off int) int { return strings.Count(text[:off], "\n") }
	var out []citation
	for _, m := range mention.FindAllStringIndex(text, -1) {
		if !sectioned.MatchString(text[m[0]:]) {
			out = append(out, citation{line: lineOf(m[0])})
		}
	}
	for _, m := range section.FindAllStringSubmatchIndex(text[first[0]:], -1) {
		off := first[0] + m[0]
		out = append(out, citation{line: lineOf(off), section: text[first[0]+m[2] : first[0]+m[3]]})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].line < out[j].line })
	return out
}

// designSections returns the section numbers the design document's
// headings define, and a problem for each number defined twice.
func designSections(doc, name string) (map[string]bool, []string) {
	secs := map[string]bool{}
	var problems []string
	for i, l := range strings.Split(doc, "\n") {
		m := heading.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		if secs[m[1]] {
			problems = append(problems, fmt.Sprintf("%s:%d: §%s has a second heading", name, i+1, m[1]))
		}
		secs[m[1]] = true
	}
	return secs, problems
}

// unit is a piece of text in which citations are looked for, with the line
// of the file each of its lines comes from.
type unit struct {
	text  string
	lines []int // lines[i]: the file line (1-based) of the text's line i
}

// goUnits returns the comment groups of a Go source file.
func goUnits(fset *token.FileSet, path string) ([]unit, error) {
	f, err := parser.ParseFile(fset, path, nil, parser.ParseComments|parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	var out []unit
	for _, g := range f.Comments {
		var u unit
		var b strings.Builder
		for _, c := range g.List {
			start := fset.Position(c.Slash).Line
			text := c.Text
			if t, ok := strings.CutPrefix(text, "//"); ok {
				text = t
			} else {
				text = strings.TrimSuffix(strings.TrimPrefix(text, "/*"), "*/")
			}
			for i, l := range strings.Split(text, "\n") {
				b.WriteString(l)
				b.WriteByte('\n')
				u.lines = append(u.lines, start+i)
			}
		}
		u.text = b.String()
		out = append(out, u)
	}
	return out, nil
}

// mdUnits returns the paragraphs of a Markdown file. In the design
// document itself every line but a heading is a unit of its own that
// cites it: a "§N" there is a reference to one of its sections.
func mdUnits(path string, self bool) ([]unit, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []unit
	var cur unit
	var b strings.Builder
	flush := func() {
		if len(cur.lines) > 0 {
			cur.text = b.String()
			out = append(out, cur)
		}
		cur, b = unit{}, strings.Builder{}
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		switch {
		case self && heading.MatchString(l):
			continue
		case self:
			out = append(out, unit{text: "DESIGN.md " + l, lines: []int{n}})
			continue
		case strings.TrimSpace(l) == "":
			flush()
			continue
		}
		b.WriteString(l)
		b.WriteByte('\n')
		cur.lines = append(cur.lines, n)
	}
	flush()
	return out, sc.Err()
}

// checkDesignRefs walks the tree at root (hidden directories and testdata
// left out; the bench module included) and returns a problem, naming
// file:line, for every citation of a section the design document does not
// have, and for every citation at all when it does not exist.
func checkDesignRefs(root string) ([]string, error) {
	doc, err := os.ReadFile(filepath.Join(root, designFile))
	exists := err == nil
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	secs, problems := designSections(string(doc), designFile)
	fset := token.NewFileSet()
	err = walkFiles(root, nil, func(rel, p string) error {
		var units []unit
		var err error
		switch {
		case strings.HasSuffix(p, ".go"):
			units, err = goUnits(fset, p)
		case strings.HasSuffix(p, ".md"):
			units, err = mdUnits(p, rel == designFile)
		default:
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		for _, u := range units {
			for _, c := range citations(u.text) {
				at := fmt.Sprintf("%s:%d", rel, u.lines[c.line])
				switch {
				case !exists && c.section == "":
					problems = append(problems, fmt.Sprintf("%s: cites DESIGN.md, and %s does not exist", at, designFile))
				case !exists:
					problems = append(problems, fmt.Sprintf("%s: cites DESIGN.md §%s, and %s does not exist", at, c.section, designFile))
				case c.section != "" && !secs[c.section]:
					problems = append(problems, fmt.Sprintf("%s: cites DESIGN.md §%s, which %s has no heading for", at, c.section, designFile))
				}
			}
		}
		return nil
	})
	return problems, err
}

// TestDesignReferences fails for every citation of a section of
// docs/DESIGN.md that has no heading there.
func TestDesignReferences(t *testing.T) {
	problems, err := checkDesignRefs(moduleRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

func TestCitations(t *testing.T) {
	for _, tc := range []struct {
		text string
		want []citation
	}{
		{"no mention here, §4", nil},
		{"see DESIGN.md §3.1.", []citation{{0, "3.1"}}},
		{"DESIGN.md §7 describes it (§7.2), see §8.1", []citation{{0, "7"}, {0, "7.2"}, {0, "8.1"}}},
		{"RFC §9 first, then DESIGN.md §2", []citation{{0, "2"}}},
		{"the design (DESIGN.md) says so", []citation{{0, ""}}},
		{"a placeholder: DESIGN.md §N", []citation{{0, ""}}},
		{" see\n DESIGN.md\n §12 for it\n", []citation{{2, "12"}}},
		{"docs/DESIGN.md §14.3)", []citation{{0, "14.3"}}},
		{"DESIGN.md §4.2, steps 2 and 3", []citation{{0, "4.2"}}},
	} {
		if got := citations(tc.text); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("citations(%q) = %v, want %v", tc.text, got, tc.want)
		}
	}
}

// TestDesignReferencesCatch runs the check on small trees with broken
// citations: it must name each one, by file and line.
func TestDesignReferencesCatch(t *testing.T) {
	write := func(t *testing.T, root, name, text string) {
		t.Helper()
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  []string // substrings, one per expected problem, in order
	}{
		{
			name: "clean",
			files: map[string]string{
				designFile:  "# d\n\n## §1 One\n\n### §1.1 Sub\n\nas §1.1 says\n",
				"a/a.go":    "// Package a: see DESIGN.md §1.1.\npackage a\n",
				"README.md": "The design: [docs/DESIGN.md](docs/DESIGN.md), §1.\n",
			},
		},
		{
			name: "dangling",
			files: map[string]string{
				designFile:  "## §1 One\n### §1.1 Sub\n",
				"a/a.go":    "package a\n\n// f does it\n// (DESIGN.md §1.1 and\n// §2.4).\nfunc f() {}\n\nconst s = \"DESIGN.md §9\" // a string is no citation\n",
				"b.go":      "/* DESIGN.md\n§3 */\npackage b\n",
				"README.md": "Intro.\n\nSee DESIGN.md\n§1.2 for it.\n",
			},
			want: []string{"README.md:4: cites DESIGN.md §1.2", "a/a.go:5: cites DESIGN.md §2.4", "b.go:2: cites DESIGN.md §3"},
		},
		{
			name: "self",
			files: map[string]string{
				designFile: "## §1 One\n\nsee §2\n\n## §1 Again\n",
			},
			want: []string{"docs/DESIGN.md:3: cites DESIGN.md §2", "docs/DESIGN.md:5: §1 has a second heading"},
		},
		{
			name: "no document",
			files: map[string]string{
				"a.go": "// DESIGN.md says why.\npackage a\n",
			},
			want: []string{"a.go:1: cites DESIGN.md, and docs/DESIGN.md does not exist"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for name, text := range tc.files {
				write(t, root, name, text)
			}
			got, err := checkDesignRefs(root)
			if err != nil {
				t.Fatal(err)
			}
			sort.Strings(got)
			if len(got) != len(tc.want) {
				t.Fatalf("problems %q, want %d: %q", got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, got[i], w)
				}
			}
		})
	}
}
