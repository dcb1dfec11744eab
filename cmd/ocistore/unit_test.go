package main

import (
	"flag"
	"io"
	"slices"
	"testing"
)

func TestHumanSize(t *testing.T) {
	for _, c := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{1229, "1.2 KiB"},
		{1048575, "1.0 MiB"}, // 1023.95 KiB rounds up a unit, not to "1024.0 KiB"
		{5 << 30, "5.0 GiB"},
		{1 << 62, "4.0 EiB"},
	} {
		if got := humanSize(c.n); got != c.want {
			t.Errorf("humanSize(%d) = %q, want %q", c.n, got, c.want)
		}
	}
}

func TestParseInterspersed(t *testing.T) {
	for _, c := range []struct {
		args    []string
		pos     []string
		format  outputFormat
		wantErr bool
	}{
		{[]string{"a", "b"}, []string{"a", "b"}, formatText, false},
		{[]string{"--format", "json", "a"}, []string{"a"}, formatJSON, false},
		{[]string{"a", "--format=json", "b"}, []string{"a", "b"}, formatJSON, false},
		{[]string{"a", "b", "--json"}, []string{"a", "b"}, formatJSON, false},
		{[]string{"a", "--", "--json", "-x"}, []string{"a", "--json", "-x"}, formatText, false},
		{[]string{"-", "a"}, []string{"-", "a"}, formatText, false},
		{[]string{"a", "--bogus"}, nil, formatText, true},
	} {
		a := &app{format: formatText}
		fs := a.commandFlags(&command{name: "t", format: true})
		fs.SetOutput(io.Discard)
		pos, err := parseInterspersed(fs, c.args)
		if (err != nil) != c.wantErr || !slices.Equal(pos, c.pos) || a.format != c.format {
			t.Errorf("%q: got %q, %s, %v; want %q, %s", c.args, pos, a.format, err, c.pos, c.format)
		}
	}
}

func TestExitCode(t *testing.T) {
	if exitCode(usagef("x")) != exitUsage || exitCode(exitStatus(exitProblems)) != exitProblems || exitCode(nil) != exitOK ||
		exitCode(io.EOF) != exitError || exitCode(flag.ErrHelp) != exitError {
		t.Error("exit codes")
	}
}
