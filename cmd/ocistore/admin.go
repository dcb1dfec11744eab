package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/journal"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// Commands on the layout as a whole: init, fsck, recover, journal, version.

var initCmd = &command{
	name:    "init",
	summary: "create an empty layout",
	help: `Creates an empty OCI image layout (oci-layout, index.json, blobs/sha256) in the
--layout directory, creating the directory if needed. A directory that already
is a layout is left as it is (ocistore adopts it: builds its journal from the
files) and the exit status is 0. A directory that holds other files is an
error.`,
	maxArgs: 0,
	run:     runInit,
}

func runInit(ctx context.Context, a *app, _ []string) error {
	_, err := os.Lstat(filepath.Join(a.layout, layout.LayoutFile))
	already := err == nil
	s, err := store.Open(ctx, a.layout, a.storeOptions(!already))
	if err != nil {
		return err
	}
	if !already {
		fmt.Fprintf(a.stdout, "created an empty OCI image layout in %s\n", s.Dir())
		return s.Close()
	}
	imgs, err := s.List(ctx)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "%s is already an OCI image layout (%s); nothing to do\n", s.Dir(), plural(len(imgs), "image", "images"))
	return nil
}

var fsckCmd = &command{
	name:    "fsck",
	summary: "check the layout's consistency (changes nothing)",
	help: `Checks the layout as it is on disk, without running recovery first (an
interrupted transaction shows as a pending record): oci-layout and index.json
parse; every blob reachable from index.json is present with the size its
descriptor says; no orphan blobs or leftover temp files; the journal is sound
and its reference counts match a recount. Blob contents other than manifests
are not read.

Text output: one line per problem, "KIND DIGEST PATH: DETAIL", then a
summary. JSON output: the report {images, blobs, bytes, problems: [{kind,
digest, path, detail}]}.

Exit status 3 when a problem is found. ocistore recover fixes what an
interrupted transaction left; other problems need a person.`,
	maxArgs: 0,
	format:  true,
	run:     runFsck,
}

func runFsck(ctx context.Context, a *app, _ []string) error {
	rep, err := store.CheckDir(ctx, a.layout, a.lockTimeout)
	if err != nil {
		return lockedHint(a, err)
	}
	if a.json() {
		if err := a.printJSON(rep); err != nil {
			return err
		}
	} else {
		for _, p := range rep.Problems {
			line := p.Kind
			if p.Digest != "" {
				line += " " + p.Digest
			}
			if p.Path != "" {
				line += " " + p.Path
			}
			fmt.Fprintf(a.stdout, "%s: %s\n", line, p.Detail)
		}
		fmt.Fprintf(a.stdout, "%s, %s, %s, %s\n", plural(rep.Images, "image", "images"), plural(rep.Blobs, "blob", "blobs"),
			sizeWithBytes(rep.Bytes), plural(len(rep.Problems), "problem", "problems"))
	}
	if !rep.OK() {
		return exitStatus(exitProblems)
	}
	return nil
}

// lockedHint makes a lock timeout of a read-only open say which layout is
// locked, as the store's own writer-lock errors do.
func lockedHint(a *app, err error) error {
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("layout %s is locked by another process (waited %s): %w", a.layout, a.lockTimeout, err)
	}
	return err
}

var recoverCmd = &command{
	name:    "recover",
	summary: "finish or undo interrupted transactions",
	help: `Opens the layout (which runs recovery) and runs recovery again under the
writer lock, then prints what was done: transactions rolled forward or
replayed (finished), rolled back (index.json was changed by another tool),
reference counts recounted, temp files removed. Prints "nothing to recover"
when the layout was consistent. Recovery is idempotent.`,
	maxArgs: 0,
	format:  true,
	run:     runRecover,
}

type recoverOutput struct {
	Actions []recovery.Action `json:"actions"`
}

func runRecover(ctx context.Context, a *app, _ []string) error {
	return a.withStore(ctx, func(s *store.Store) error {
		acts, err := s.Recover(ctx)
		if err != nil {
			return err
		}
		if a.json() {
			if acts == nil {
				acts = []recovery.Action{}
			}
			return a.printJSON(recoverOutput{Actions: acts})
		}
		if len(acts) == 0 {
			fmt.Fprintln(a.stdout, "nothing to recover")
			return nil
		}
		for _, act := range acts {
			line := act.Kind
			if act.Txn != 0 {
				line += fmt.Sprintf(" txn %d", act.Txn)
			}
			fmt.Fprintf(a.stdout, "%s: %s\n", line, act.Detail)
		}
		return nil
	})
}

var journalCmd = &command{
	name:    "journal",
	summary: "list pending journal records (read-only)",
	help: `Lists the transactions that are journaled but not finished, as the journal
holds them, without running recovery: id, operation, time, the index.json
digest before and after, and how many blobs the transaction unlinks. A healthy
layout has none between commands; ocistore recover finishes them.

JSON output: {journal, pending: [record...]}; journal is false for a layout
ocistore has not opened yet (it has no journal).`,
	maxArgs: 0,
	format:  true,
	run:     runJournal,
}

type pendingRecord struct {
	*journal.Record
	UnlinkCount int `json:"unlinkCount"`
}

type journalOutput struct {
	Journal bool            `json:"journal"`
	Pending []pendingRecord `json:"pending"`
}

func runJournal(ctx context.Context, a *app, _ []string) error {
	if _, err := os.Stat(filepath.Join(a.layout, layout.LayoutFile)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: %w", a.layout, store.ErrNotLayout)
		}
		return err
	}
	out := journalOutput{Journal: true, Pending: []pendingRecord{}}
	recs, err := store.PendingRecords(a.layout, a.lockTimeout)
	switch {
	case errors.Is(err, store.ErrNotFound):
		out.Journal = false
	case err != nil:
		return lockedHint(a, err)
	}
	for _, r := range recs {
		out.Pending = append(out.Pending, pendingRecord{Record: r, UnlinkCount: len(r.Unlink)})
	}
	if a.json() {
		return a.printJSON(out)
	}
	switch {
	case !out.Journal:
		fmt.Fprintf(a.stdout, "no journal in %s: ocistore has not opened this layout yet\n", a.layout)
		return nil
	case len(out.Pending) == 0:
		fmt.Fprintln(a.stdout, "no pending records")
		return nil
	}
	tw := a.table()
	fmt.Fprintln(tw, "ID\tOP\tTIME\tOLD INDEX\tNEW INDEX\tUNLINK")
	for _, r := range out.Pending {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\n", r.ID, r.Op, r.Time.UTC().Format(time.RFC3339), orDash(r.OldIndex), orDash(r.NewIndex), r.UnlinkCount)
	}
	return tw.Flush()
}

func orDash(d digest.Digest) string {
	if d == "" {
		return "-"
	}
	return d.String()
}

var versionCmd = &command{
	name:    "version",
	summary: "print the version",
	maxArgs: 0,
	run: func(_ context.Context, a *app, _ []string) error {
		_, err := fmt.Fprintln(a.stdout, versionString())
		return err
	},
}

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = ""

func versionString() string {
	v, rev := version, ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				rev = s.Value[:12]
			}
		}
	}
	if v == "" {
		v = "devel"
	}
	if rev != "" {
		v += " " + rev
	}
	return fmt.Sprintf("ocistore %s (%s %s/%s)", v, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
