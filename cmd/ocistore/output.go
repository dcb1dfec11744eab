package main

import (
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

// printJSON writes v to stdout, indented, with a final newline.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printFreeingJSON writes v, the outcome of a command that frees blobs (its
// store.Result is r), as printJSON does; no blob freed is "freed": [], not
// null.
func (a *app) printFreeingJSON(v any, r *store.Result) error {
	if r.Freed == nil {
		r.Freed = []store.Blob{}
	}
	return a.printJSON(v)
}

// table returns an aligned-column writer on stdout; Flush it when done.
func (a *app) table() *tabwriter.Writer { return newTable(a.stdout) }

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 3, ' ', 0) }

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
