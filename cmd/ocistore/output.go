package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/ocistore/ocistore/store"
)

// outputFormat is the value of --format.
type outputFormat string

const (
	formatText outputFormat = "text"
	formatJSON outputFormat = "json"
)

func (f *outputFormat) String() string { return string(*f) }

func (f *outputFormat) Set(s string) error {
	switch outputFormat(s) {
	case formatText, formatJSON:
		*f = outputFormat(s)
		return nil
	}
	return errors.New("want text or json")
}

func (a *app) json() bool { return a.format == formatJSON }

// printJSON writes v to stdout, indented, with a final newline. Nothing is
// HTML-escaped: '<', '>' and '&' are written as they are.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// The JSON output of every command is a contract, documented field by
// field in docs/JSON.md: every field is always present, a list is [] when
// empty (never null), and what does not apply is null; no display
// placeholder (<none>, -) appears in it.

// entryRef names an index.json entry the same way in every command's
// JSON: ref is its org.opencontainers.image.ref.name, repository and tag
// its parts (store.SplitRef); an untagged entry has null for all three and
// untagged true. A ref without a repository part ("latest") has the
// repository "", a ref without a tag part ("app@sha256:...") the tag null.
type entryRef struct {
	Ref        *string `json:"ref"`
	Repository *string `json:"repository"`
	Tag        *string `json:"tag"`
	Untagged   bool    `json:"untagged"`
}

func refOf(name string) entryRef {
	if name == "" {
		return entryRef{Untagged: true}
	}
	repo, tag := store.SplitRef(name)
	r := entryRef{Ref: &name, Repository: &repo}
	if tag != "" {
		r.Tag = &tag
	}
	return r
}

// name is the entry's ref name, "" when untagged.
func (r entryRef) name() string {
	if r.Ref == nil {
		return ""
	}
	return *r.Ref
}

// freedJSON is what a command that frees blobs says of them (store.Result).
type freedJSON struct {
	Txn        uint64       `json:"txn"` // 0: nothing committed
	Freed      []store.Blob `json:"freed"`
	BytesFreed int64        `json:"bytesFreed"`
	Pinned     *string      `json:"pinned"`
	Kept       []store.Blob `json:"kept"`
}

func freedOf(r *store.Result) freedJSON {
	f := freedJSON{Txn: r.Txn, Freed: nonNil(r.Freed), BytesFreed: r.BytesFreed, Kept: nonNil(r.Kept)}
	if r.Pinned != "" {
		f.Pinned = &r.Pinned
	}
	return f
}

// nonNil returns s, or an empty slice for nil: JSON [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// table returns an aligned-column writer on stdout; Flush it when done.
func (a *app) table() *tableWriter { return newTable(a.stdout) }

// tableWriter is an aligned-column writer whose output is buffered: its
// Flush writes the table in a few large writes (a tabwriter alone writes
// each cell with its own system call: 160,000 of them for ls of 20,000
// images).
type tableWriter struct {
	*tabwriter.Writer
	buf *bufio.Writer
}

// Flush aligns and writes out what was written.
func (t *tableWriter) Flush() error {
	if err := t.Writer.Flush(); err != nil {
		return err
	}
	return t.buf.Flush()
}

func newTable(w io.Writer) *tableWriter {
	buf := bufio.NewWriterSize(w, 64<<10)
	return &tableWriter{Writer: tabwriter.NewWriter(buf, 0, 0, 3, ' ', 0), buf: buf}
}

// humanSize formats n bytes with binary units: "512 B", "1.2 KiB", "3.0 GiB".
func humanSize(n int64) string {
	if n < 1024 && n > -1024 {
		return fmt.Sprintf("%d B", n)
	}
	const units = "KMGTPE"
	v := float64(n) / 1024
	i := 0
	// 1023.95 would print as "1024.0": move to the next unit instead.
	for (v >= 1023.95 || v <= -1023.95) && i < len(units)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, units[i])
}

// sizeWithBytes is humanSize followed by the exact count: "1.2 KiB (1234 bytes)".
func sizeWithBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%s (%d bytes)", humanSize(n), n)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}
