package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// bashComplete sources the bash script and runs its completion function as
// bash would for the line (the cursor at its end); it returns the
// candidates, one a line. The binary is found as "ocistore" in PATH, as a
// user's shell finds it.
func bashComplete(t *testing.T, script, line string) []string {
	t.Helper()
	drive := `source "$1"
COMP_LINE=$2
COMP_POINT=${#COMP_LINE}
# COMP_WORDS as bash splits the line: at white space and at the
# characters of COMP_WORDBREAKS (a word of them alone).
COMP_WORDS=()
w=
for (( i = 0; i < ${#COMP_LINE}; i++ )); do
	c=${COMP_LINE:i:1}
	if [[ $c == [[:space:]] ]]; then
		[[ -n $w ]] && COMP_WORDS+=("$w")
		w=
	elif [[ $COMP_WORDBREAKS == *"$c"* ]]; then
		[[ -n $w ]] && COMP_WORDS+=("$w")
		COMP_WORDS+=("$c")
		w=
	else
		w+=$c
	fi
done
if [[ -n $w ]]; then
	COMP_WORDS+=("$w")
elif [[ $COMP_LINE == *[[:space:]] ]]; then
	COMP_WORDS+=("")
fi
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
complete -p ocistore >/dev/null || exit 3
_ocistore ocistore "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
`
	cmd := exec.Command("bash", "--norc", "--noprofile", "-c", drive, "bash", script, line)
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+string(os.PathListSeparator)+os.Getenv("PATH"), "OCISTORE_LAYOUT=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("completing %q: %v\n%s", line, err, out)
	}
	got := strings.Fields(string(out))
	slices.Sort(got)
	return got
}

func TestCompletion(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	must(t, 0, "-l", f.dir, "tag", "a", "repo:1.0", "repo:2.0")
	src := newFixture(t) // import's refs come from its source layout
	must(t, 0, "-l", src.dir, "tag", "b", "only-in-src")
	script := filepath.Join(t.TempDir(), "ocistore.bash")
	if err := os.WriteFile(script, []byte(must(t, 0, "completion", "bash").stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bash", "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	dirs := t.TempDir()
	for _, d := range []string{"layout-a", "layout-b", "other"} {
		if err := os.Mkdir(filepath.Join(dirs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tags := []string{"a", "a2", "b", "multi", "repo:1.0", "repo:2.0"}
	var visible []string
	for _, c := range commands {
		if !c.hidden {
			visible = append(visible, c.name)
		}
	}
	visible = append(visible, "help")
	slices.Sort(visible)
	for _, c := range []struct {
		line string
		want []string
	}{
		{"ocistore l", []string{"ls"}},
		{"ocistore ", visible},
		{"ocistore -l " + f.dir + " i", []string{"import", "init", "inspect"}},
		{"ocistore --log-level ", []string{"debug", "error", "info", "warn"}},
		{"ocistore --log-level w", []string{"warn"}},
		{"ocistore ls --format ", []string{"json", "text"}},
		{"ocistore ls --format=j", []string{"json"}},
		{"ocistore rm --keep", []string{"--keep-referrers"}},
		{"ocistore fsck --re", []string{"--rebuild-journal", "--repair"}},
		{"ocistore ls --lo", []string{"--lock-timeout", "--log-format", "--log-level"}},
		{"ocistore --lay", []string{"--layout"}},
		{"ocistore completion ", []string{"bash", "fish", "zsh"}},
		{"ocistore help r", []string{"recover", "rm"}},
		// References of the layout named on the line, before or after
		// the command, in each spelling.
		{"ocistore -l " + f.dir + " rm ", tags},
		{"ocistore rm -l " + f.dir + " ", tags},
		{"ocistore --layout=" + f.dir + " inspect m", []string{"multi"}},
		{"ocistore --layout " + f.dir + " tag a ", tags},
		{"ocistore --lock-timeout 1s -l " + f.dir + " untag ", tags},
		// A colon is a word break: bash replaces the part after it.
		{"ocistore -l " + f.dir + " rm repo:", []string{"1.0", "2.0"}},
		{"ocistore -l " + f.dir + " rm repo:2", []string{"2.0"}},
		// Digests after "sha256:".
		{"ocistore -l " + f.dir + " inspect sha256:" + f.multi.Digest.Encoded()[:6], []string{f.multi.Digest.Encoded()}},
		// Import: a directory, then the references of that layout.
		{"ocistore -l " + f.dir + " import " + src.dir + " only", []string{"only-in-src"}},
		{"ocistore import " + dirs + "/layout-", []string{dirs + "/layout-a", dirs + "/layout-b"}},
		{"ocistore -l " + dirs + "/o", []string{dirs + "/other"}},
		{"ocistore --layout=" + dirs + "/o", []string{dirs + "/other"}},
		// No argument, no candidate; a flag's free value, none.
		{"ocistore -l " + f.dir + " ls ", nil},
		{"ocistore gc --grace ", nil},
		// After "--", arguments only.
		{"ocistore -l " + f.dir + " rm -- m", []string{"multi"}},
	} {
		if got := bashComplete(t, script, c.line); !slices.Equal(got, c.want) {
			t.Errorf("bash completes %q to %q, want %q", c.line, got, c.want)
		}
	}
}

// TestCompletionScripts: every script is generated from the command table:
// it names every command and every flag of each; the zsh and fish ones are
// checked by their shell when it is installed.
func TestCompletionScripts(t *testing.T) {
	t.Parallel()
	sp := newComplSpec()
	for _, shell := range []string{"bash", "zsh", "fish"} {
		script := must(t, 0, "completion", shell).stdout
		words := map[string]bool{}
		for _, w := range strings.FieldsFunc(script, func(r rune) bool {
			return !unicode.IsLetter(r) && !unicode.IsDigit(r) && r != '-' && r != '_'
		}) {
			words[w] = true
		}
		for _, c := range commands {
			if !c.hidden && !words[c.name] {
				t.Errorf("%s script does not name the command %s", shell, c.name)
			}
		}
		for _, c := range sp.cmds {
			for _, fl := range c.flags {
				if !words[fl.name] {
					t.Errorf("%s script does not name %s's flag %s", shell, c.name, fl.name)
				}
			}
		}
		for _, fl := range []string{"--layout", "-l", "--lock-timeout", "--log-level", "--log-format", "--shared-blob-dir", "--version"} {
			if !words[fl] {
				t.Errorf("%s script does not name the global flag %s", shell, fl)
			}
		}
		if !strings.Contains(script, "__complete-refs") {
			t.Errorf("%s script does not list references", shell)
		}
		if path, err := exec.LookPath(shell); err == nil {
			p := filepath.Join(t.TempDir(), "ocistore."+shell)
			if err := os.WriteFile(p, []byte(script), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(path, "-n", p).CombinedOutput(); err != nil {
				t.Errorf("%s -n: %v\n%s", shell, err, out)
			}
		}
	}
	r := must(t, exitUsage, "completion", "tcsh")
	wantContains(t, "stderr", r.stderr, `ocistore: completion: unknown shell "tcsh": want bash, zsh or fish`)
	// The hidden command is neither in the help nor completed.
	if r := must(t, 0, "help"); strings.Contains(r.stdout, "__complete") {
		t.Errorf("help lists the hidden command:\n%s", r)
	}
	if slices.Contains(sp.names(), completeRefsCmd.name) {
		t.Error("the hidden command is completed")
	}
}

func TestArgKinds(t *testing.T) {
	ks := argKinds(importCmd)
	if len(ks) != 2 || !ks[0].layout || !ks[1].ref || !ks[1].repeat || ks[1].kind(ks) != "ref@0" {
		t.Errorf("import's arguments: %+v", ks)
	}
	if ks := argKinds(tagCmd); len(ks) != 2 || ks[0].kind(ks) != "ref" || ks[0].repeat || !ks[1].repeat {
		t.Errorf("tag's arguments: %+v", ks)
	}
	if ks := argKinds(completionCmd); len(ks) != 1 || ks[0].kind(ks) != "choice bash zsh fish" {
		t.Errorf("completion's argument: %+v", ks)
	}
}
