package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ocistore/ocistore/store"
)

// Commands that reclaim space: gc (and prune, du).

// cmdOpts holds the values of command flags other than --format.
type cmdOpts struct {
	grace  time.Duration
	dryRun bool
}

// defaultGrace is gc's --grace when not given: a blob written in the last
// hour by a process that tags it without a lease is not garbage yet.
const defaultGrace = time.Hour

func graceFlag(fs *flag.FlagSet, a *app) {
	a.opts.grace = defaultGrace
	fs.Func("grace", "keep unreferenced blobs modified within this duration (default 1h)", func(s string) error {
		d, err := parseDuration(s)
		if err != nil {
			return err
		}
		if d < 0 {
			return errors.New("must not be negative")
		}
		a.opts.grace = d
		return nil
	})
}

var gcCmd = &command{
	name:    "gc",
	summary: "remove blobs that nothing in index.json uses",
	help: `Removes every blob file under blobs/ that nothing reachable from index.json
uses: left by another tool, by an untag followed by a removal elsewhere, by an
ingest whose manifest was never tagged, or by a crash. A blob is kept when a
live lease holds it (a pull in progress) or when its file was modified within
the grace period. Blob contents are not read.

GC is one journal transaction, like rm: a record of the blobs, then the
unlinks, then the record is cleared; a crash in between is finished by the
next command.

Prints each removed blob with its size and the total; with --dry-run, what
would be removed. JSON output: {txn, freed: [{digest, size}], bytesFreed,
dryRun, scanned, young, leased}.`,
	flagHelp: `      --grace DURATION  keep unreferenced blobs modified within DURATION
                        (default 1h; e.g. 30m, 0s, 7d)
      --dry-run         show what would be removed; change nothing`,
	maxArgs: 0,
	format:  true,
	flags: func(fs *flag.FlagSet, a *app) {
		graceFlag(fs, a)
		fs.BoolVar(&a.opts.dryRun, "dry-run", false, "change nothing")
	},
	run: runGC,
}

func runGC(ctx context.Context, a *app, _ []string) error {
	return a.withStore(ctx, func(s *store.Store) error {
		res, err := s.GC(ctx, store.GCOptions{Grace: a.opts.grace, DryRun: a.opts.dryRun})
		if err != nil {
			return err
		}
		if res.Freed == nil {
			res.Freed = []store.Blob{}
		}
		if a.json() {
			return a.printJSON(res)
		}
		verb := "removed"
		if res.DryRun {
			verb = "would remove"
		}
		tw := a.table()
		for _, b := range res.Freed {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", verb, b.Digest, humanSize(b.Size))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "%s %s, %s", verb, plural(len(res.Freed), "blob", "blobs"), sizeWithBytes(res.BytesFreed))
		var kept []string
		if res.Leased > 0 {
			kept = append(kept, fmt.Sprintf("%d leased", res.Leased))
		}
		if res.Young > 0 {
			kept = append(kept, fmt.Sprintf("%d within the grace period", res.Young))
		}
		if len(kept) > 0 {
			fmt.Fprintf(a.stdout, "; kept %s", strings.Join(kept, ", "))
		}
		_, err = fmt.Fprintln(a.stdout)
		return err
	})
}

// parseDuration is time.ParseDuration plus whole days ("7d") and weeks
// ("2w"), which cron jobs use.
func parseDuration(s string) (time.Duration, error) {
	for suffix, unit := range map[string]time.Duration{"d": 24 * time.Hour, "w": 7 * 24 * time.Hour} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			v, err := strconv.ParseFloat(n, 64)
			if err != nil {
				return 0, fmt.Errorf("invalid duration %q", s)
			}
			return time.Duration(v * float64(unit)), nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q", s)
	}
	return d, nil
}

var duCmd = &command{
	name:    "du",
	summary: "show the space the layout takes, per repository",
	help: `Sums the blob files of the layout: total; referenced (reachable from
index.json), split into unique (used by one image) and shared (by several);
orphaned (used by nothing), split into leased (held by a pull in progress),
within the grace period, and reclaimable (what ocistore gc with the same
--grace removes). Then per repository (the part of the tag before ':'; "-"
groups tags without one, <none> the untagged entries): tags, images, total
size, unique (what removing the repository frees) and shared.

Every manifest is read, no other blob. du takes no lock and runs no
recovery: it describes the last committed index.json.

JSON output: {images, blobs, totalBytes, referencedBytes, uniqueBytes,
sharedBytes, orphanBytes, leasedBytes, youngBytes, reclaimableBytes,
repositories: [{name, tags, images, totalBytes, uniqueBytes, sharedBytes}]}.`,
	flagHelp: `      --grace DURATION  the grace period of gc, for what is reclaimable (default 1h)`,
	maxArgs:  0,
	format:   true,
	flags:    graceFlag,
	run:      runDu,
}

func runDu(ctx context.Context, a *app, _ []string) error {
	return a.withReadStore(ctx, func(s *store.Store) error {
		u, err := s.Usage(ctx, store.UsageOptions{Grace: a.opts.grace})
		if err != nil {
			return err
		}
		if a.json() {
			return a.printJSON(u)
		}
		tw := a.table()
		fmt.Fprintln(tw, "REPOSITORY\tTAGS\tIMAGES\tSIZE\tUNIQUE\tSHARED")
		for _, r := range u.Repositories {
			name := r.Name
			if name == "" {
				name = "-"
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", name, r.Tags, r.Images, humanSize(r.TotalBytes), humanSize(r.UniqueBytes), humanSize(r.SharedBytes))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(a.stdout)
		tw = a.table()
		fmt.Fprintf(tw, "Total:\t%s in %s, %s\n", sizeWithBytes(u.TotalBytes), plural(u.Blobs, "blob", "blobs"), plural(u.Images, "image", "images"))
		fmt.Fprintf(tw, "Referenced:\t%s (unique %s, shared %s)\n", sizeWithBytes(u.ReferencedBytes), humanSize(u.UniqueBytes), humanSize(u.SharedBytes))
		fmt.Fprintf(tw, "Orphaned:\t%s (leased %s, within the grace period %s)\n", sizeWithBytes(u.OrphanBytes), humanSize(u.LeasedBytes), humanSize(u.YoungBytes))
		fmt.Fprintf(tw, "Reclaimable:\t%s (ocistore gc --grace %s)\n", sizeWithBytes(u.ReclaimableBytes), shortDuration(a.opts.grace))
		if len(u.Unreadable) > 0 {
			fmt.Fprintf(tw, "Unreadable:\t%s not counted (run ocistore fsck)\n", plural(len(u.Unreadable), "manifest", "manifests"))
		}
		return tw.Flush()
	})
}

// shortDuration formats d without trailing zero units: "1h", "30m", "1h30m".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
