package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// Commands that reclaim space: gc (and prune, du).

// cmdOpts holds the values of command flags other than --format.
type cmdOpts struct {
	grace         time.Duration
	dryRun        bool
	keepReferrers bool
	policy        store.Policy
}

// defaultGrace is gc's --grace when not given: a blob written in the last
// hour by a process that tags it without a lease is not garbage yet.
const defaultGrace = store.DefaultGrace

func graceFlag(fs *flag.FlagSet, a *app) {
	a.opts.grace = defaultGrace
	fs.Func("grace", "keep unreferenced blobs modified within this duration (default 1h)",
		atLeast(parseDuration, 0, "must not be negative", func(d time.Duration) { a.opts.grace = d }))
}

// atLeast is a flag.Func callback for a value that parse reads and that must
// be at least least (else the error tooSmall); set takes it.
func atLeast[T int64 | time.Duration](parse func(string) (T, error), least T, tooSmall string, set func(T)) func(string) error {
	return func(s string) error {
		v, err := parse(s)
		if err != nil {
			return err
		}
		if v < least {
			return errors.New(tooSmall)
		}
		set(v)
		return nil
	}
}

// count is a flag.Func callback for a whole number, at least 1 (else the
// error want); set takes it.
func count(want string, set func(int)) func(string) error {
	return func(s string) error {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return errors.New(want)
		}
		set(n)
		return nil
	}
}

var gcCmd = &command{
	name:    "gc",
	summary: "remove blobs that nothing in index.json uses",
	help: `Removes every blob file under blobs/ that nothing reachable from index.json
uses: left by another tool, by an untag followed by a removal elsewhere, by an
ingest whose manifest was never tagged, or by a crash. A blob is kept when a
live lease holds it (a pull in progress) or when its file was modified within
the grace period. Blob contents are not read.

It also removes the staging files of the upload sessions of ocistore serve
that have expired (an abandoned push).

GC is one journal transaction, like rm: a record of the blobs, then the
unlinks, then the record is cleared; a crash in between is finished by the
next command.

Prints each removed blob with its size and the total; with --dry-run, what
would be removed. For a day after the journal was rebuilt without its
leases (they could not be read from the damaged one), nothing is removed and
a line "freed nothing: ..." says why.

JSON output (docs/JSON.md): {dryRun, txn, freed: [{digest, size}],
bytesFreed, pinned, kept, scanned, young, leased, uploads, uploadBytes,
recovery: [{kind, txn, detail}]}; every field is always there (txn 0 when nothing was committed,
pinned null when not pinned; recovery, for a dry run, what the recovery a
real run does first would do, else []).

A dry run takes no lock and changes no byte (it works on a read-only
mount and while another process writes): it runs the real plan on a
private copy of the journal, after the recovery a real run does first,
done in that copy only, and prints that recovery as "would first ...".`,
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

type gcOutput struct {
	DryRun bool `json:"dryRun"`
	freedJSON
	Scanned int `json:"scanned"` // blob files looked at
	Young   int `json:"young"`   // unreferenced, kept: within the grace period
	Leased  int `json:"leased"`  // unreferenced, kept: held by a live lease
	// Uploads and UploadBytes are the staging files of expired upload
	// sessions removed (would be).
	Uploads     int   `json:"uploads"`
	UploadBytes int64 `json:"uploadBytes"`
	// Recovery is, for a dry run, what the recovery a real run does
	// first would do; [] otherwise.
	Recovery []recovery.Action `json:"recovery"`
}

// wouldRecover is the recovery field of a dry run's JSON: [] when none.
func wouldRecover(acts []recovery.Action) []recovery.Action {
	if acts == nil {
		return []recovery.Action{}
	}
	return acts
}

func runGC(ctx context.Context, a *app, _ []string) error {
	return a.withWriteOrDry(a.opts.dryRun)(ctx, func(s *store.Store) error {
		res, err := s.GC(ctx, store.GCOptions{Grace: a.opts.grace, DryRun: a.opts.dryRun})
		if err != nil {
			return err
		}
		if a.json() {
			return a.printJSON(gcOutput{DryRun: res.DryRun, freedJSON: freedOf(&res.Result), Scanned: res.Scanned, Young: res.Young, Leased: res.Leased,
				Uploads: res.Uploads, UploadBytes: res.UploadBytes, Recovery: wouldRecover(res.Recovery)})
		}
		verb := "removed"
		if res.DryRun {
			verb = "would remove"
		}
		a.printWouldRecover(res.Recovery)
		tw := a.table()
		for _, b := range res.Freed {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", verb, b.Digest, humanSize(b.Size))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "%s %s, %s", verb, plural(len(res.Freed), "blob", "blobs"), sizeWithBytes(res.BytesFreed))
		if res.Uploads > 0 {
			fmt.Fprintf(a.stdout, "; %s %s of expired uploads, %s", verb, plural(res.Uploads, "staging file", "staging files"), sizeWithBytes(res.UploadBytes))
		}
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
		a.warnPinned(res.Pinned, -1)
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
groups tags without one, <none> the untagged entries): images, manifests,
total size, unique (what removing the repository frees) and shared.

Images are the entries of index.json, as fsck and ls count them (a
manifest with two tags is two images); manifests the distinct manifests
among them.

Every manifest is read, no other blob. du takes no lock and runs no
recovery: it describes the last committed index.json.

JSON output (docs/JSON.md): {images, manifests, blobs, totalBytes,
referencedBytes, uniqueBytes, sharedBytes, orphanBytes, leasedBytes,
youngBytes, reclaimableBytes, otherLayoutsBytes, unreadable, repositories:
[{repository, untagged, images, manifests, totalBytes, uniqueBytes,
sharedBytes}]}; repository is "" for tags without one, null for the
untagged entries.`,
	flagHelp: `      --grace DURATION  the grace period of gc, for what is reclaimable (default 1h)`,
	maxArgs:  0,
	format:   true,
	flags:    graceFlag,
	run:      runDu,
}

type duOutput struct {
	Images            int               `json:"images"`    // index.json entries, as fsck counts them
	Manifests         int               `json:"manifests"` // distinct manifests among them
	Blobs             int               `json:"blobs"`
	TotalBytes        int64             `json:"totalBytes"`
	ReferencedBytes   int64             `json:"referencedBytes"`
	UniqueBytes       int64             `json:"uniqueBytes"`
	SharedBytes       int64             `json:"sharedBytes"`
	OrphanBytes       int64             `json:"orphanBytes"`
	LeasedBytes       int64             `json:"leasedBytes"`
	YoungBytes        int64             `json:"youngBytes"`
	ReclaimableBytes  int64             `json:"reclaimableBytes"`
	OtherLayoutsBytes int64             `json:"otherLayoutsBytes"`
	Unreadable        []string          `json:"unreadable"`
	Repositories      []duRepositoryRow `json:"repositories"`
}

type duRepositoryRow struct {
	Repository  *string `json:"repository"` // "" for tags without one; null for the untagged entries
	Untagged    bool    `json:"untagged"`
	Images      int     `json:"images"`
	Manifests   int     `json:"manifests"`
	TotalBytes  int64   `json:"totalBytes"`
	UniqueBytes int64   `json:"uniqueBytes"`
	SharedBytes int64   `json:"sharedBytes"`
}

func duOf(u *store.Usage) duOutput {
	out := duOutput{
		Images: u.Images, Manifests: u.Manifests, Blobs: u.Blobs, TotalBytes: u.TotalBytes,
		ReferencedBytes: u.ReferencedBytes, UniqueBytes: u.UniqueBytes, SharedBytes: u.SharedBytes,
		OrphanBytes: u.OrphanBytes, LeasedBytes: u.LeasedBytes, YoungBytes: u.YoungBytes,
		ReclaimableBytes: u.ReclaimableBytes, OtherLayoutsBytes: u.OtherLayoutsBytes,
		Unreadable: nonNil(u.Unreadable), Repositories: []duRepositoryRow{},
	}
	for _, r := range u.Repositories {
		row := duRepositoryRow{Untagged: r.Untagged, Images: r.Images, Manifests: r.Manifests,
			TotalBytes: r.TotalBytes, UniqueBytes: r.UniqueBytes, SharedBytes: r.SharedBytes}
		if !r.Untagged {
			name := r.Name
			row.Repository = &name
		}
		out.Repositories = append(out.Repositories, row)
	}
	return out
}

func runDu(ctx context.Context, a *app, _ []string) error {
	return a.withReadStore(ctx, func(s *store.Store) error {
		u, err := s.Usage(ctx, store.UsageOptions{Grace: a.opts.grace})
		if err != nil {
			return err
		}
		if a.json() {
			return a.printJSON(duOf(u))
		}
		tw := a.table()
		fmt.Fprintln(tw, "REPOSITORY\tIMAGES\tMANIFESTS\tSIZE\tUNIQUE\tSHARED")
		for _, r := range u.Repositories {
			name := r.Name
			switch {
			case r.Untagged:
				name = "<none>"
			case name == "":
				name = "-"
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", name, r.Images, r.Manifests, humanSize(r.TotalBytes), humanSize(r.UniqueBytes), humanSize(r.SharedBytes))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(a.stdout)
		tw = a.table()
		fmt.Fprintf(tw, "Total:\t%s in %s, %s (%s)\n", sizeWithBytes(u.TotalBytes), plural(u.Blobs, "blob", "blobs"),
			plural(u.Images, "image", "images"), plural(u.Manifests, "manifest", "manifests"))
		fmt.Fprintf(tw, "Referenced:\t%s (unique %s, shared %s)\n", sizeWithBytes(u.ReferencedBytes), humanSize(u.UniqueBytes), humanSize(u.SharedBytes))
		fmt.Fprintf(tw, "Orphaned:\t%s (leased %s, within the grace period %s)\n", sizeWithBytes(u.OrphanBytes), humanSize(u.LeasedBytes), humanSize(u.YoungBytes))
		if u.OtherLayoutsBytes > 0 {
			fmt.Fprintf(tw, "Other layouts:\t%s (used by the layouts sharing the blob directory)\n", sizeWithBytes(u.OtherLayoutsBytes))
		}
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

var pruneCmd = &command{
	name:    "prune",
	summary: "remove images by policy: untagged, keep-last, age, size budget, filters",
	help: `Removes the images a policy chooses, and every blob only they used, in ONE
transaction whatever their number (one journal record, one index.json write).
Filters choose the candidates; rules choose among them; give at least one rule.

Rules:
  --untagged           remove every untagged entry (podman image prune does
                       so by default; Docker calls them dangling images)
  --keep-last N        keep the newest N images of each repository; without
                       --older-than, until or --max-size it removes the
                       others, with one of them it only protects them
  --older-than DUR     remove images created more than DUR ago (720h, 30d)
  --filter until=TIME  remove images created before TIME (RFC 3339, a date
                       2006-01-02, Unix seconds, or a duration ago: 24h)
  --max-size SIZE      then remove untagged entries, then the least recently
                       used images, until the layout keeps at most SIZE bytes
                       (20GiB, 500MB, 1G, 12345)

Untagged entries go first, as dangling images do with Docker and podman:
--keep-last keeps none of them (they belong to no repository), --max-size
removes them before any tagged image, and --untagged removes them all
whatever the other rules choose. An untagged entry is not removed as such
when it is also tagged, when an image that stays references it (a platform
manifest of a tagged index that index.json also lists), or when it is a
referrer. Leases still keep their blobs.

Filters (repeatable; an image must match every label and one ref):
  --filter ref=GLOB    tags matching GLOB (path.Match: * does not cross /);
                       untagged entries never match
  --filter label=K=V   config label K has value V (label=K: K is set)

A repository is the part of the tag before ':' ("example.com/app" for
"example.com/app:1.0"); tags without one form one group. An image's age is
its config's "created", else when the store first saw it; its last use is
the last resolve or manifest read through the library, else when the store
first saw it. An image with several tags counts once. Referrers (signatures,
SBOMs: manifests with a subject) are never chosen by a rule: they go with
their subject, unless --keep-referrers.

Prints each removed reference with the rule that removed it (untagged,
keep-last, older-than, max-size, referrer, dangling-referrer), then the
blobs and bytes freed and the size kept. For a day after the journal was
rebuilt without its leases, nothing is removed and a line
"freed nothing: ..." says why.

JSON output (docs/JSON.md): {dryRun, txn, freed: [{digest, size}],
bytesFreed, pinned, kept, removed: [{ref, repository, tag, untagged, digest,
reason}], sizeBefore, sizeAfter, overBudget, recovery: [{kind, txn,
detail}]}; every field is always there, a dry run's too (txn 0 when nothing
was committed, pinned null when not pinned; recovery as gc's). A dry run
changes no byte and takes no lock, as gc's.`,
	flagHelp: `      --untagged          remove every untagged entry
      --keep-last N       keep the newest N images per repository
      --older-than DUR    remove images older than DUR
      --max-size SIZE     keep at most SIZE bytes: untagged entries, then the
                          least recently used images go first
      --filter KEY=VALUE  until=TIME, ref=GLOB or label=K[=V]; repeatable
      --keep-referrers    do not remove referrers with their subjects
      --dry-run           show what would be removed; change nothing`,
	maxArgs: 0,
	format:  true,
	flags: func(fs *flag.FlagSet, a *app) {
		p := &a.opts.policy
		fs.BoolVar(&p.Untagged, "untagged", false, "remove every untagged entry")
		fs.Func("keep-last", "keep the newest N per repository",
			count("want a whole number of images, at least 1", func(n int) { p.KeepLast = n }))
		fs.Func("older-than", "remove images older than this",
			atLeast(parseDuration, 1, "want a positive duration", func(d time.Duration) { p.OlderThan = d }))
		fs.Func("max-size", "size budget",
			atLeast(parseSize, 1, "want a positive size", func(n int64) { p.MaxSize = n }))
		fs.Func("filter", "until=TIME, ref=GLOB, label=K[=V]", func(s string) error {
			return addFilter(p, s, time.Now())
		})
		fs.BoolVar(&p.KeepReferrers, "keep-referrers", false, "keep referrers")
		fs.BoolVar(&p.DryRun, "dry-run", false, "change nothing")
	},
	run: runPrune,
}

// addFilter applies one --filter KEY=VALUE to p.
func addFilter(p *store.Policy, s string, now time.Time) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || v == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", s)
	}
	switch k {
	case "until":
		t, err := parseTime(v, now)
		if err != nil {
			return err
		}
		p.Until = t
	case "ref", "reference":
		p.Refs = append(p.Refs, v)
	case "label":
		p.Labels = append(p.Labels, v)
	default:
		return fmt.Errorf("unknown filter %q (want until, ref or label)", k)
	}
	return nil
}

// parseTime reads an RFC 3339 time, a date, Unix seconds, or a duration
// before now (as docker's until filter does).
func parseTime(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Unix(n, 0).UTC(), nil
	}
	if d, err := parseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("invalid time %q (want RFC 3339, 2006-01-02, Unix seconds or a duration)", s)
}

// parseSize reads a byte count: a number with an optional unit, binary
// (KiB, MiB, GiB, TiB, or K, M, G, T) or decimal (KB, MB, GB, TB).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40,
		"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("invalid size %q: unknown unit %q", s, unit)
	}
	n := v * mult
	if n >= 1<<63 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return int64(n), nil
}

type pruneOutput struct {
	DryRun bool `json:"dryRun"`
	freedJSON
	Removed    []prunedRow `json:"removed"`
	SizeBefore int64       `json:"sizeBefore"`
	SizeAfter  int64       `json:"sizeAfter"`
	OverBudget bool        `json:"overBudget"`
	// Recovery: as gcOutput's.
	Recovery []recovery.Action `json:"recovery"`
}

type prunedRow struct {
	entryRef
	Digest string `json:"digest"`
	Reason string `json:"reason"` // a store.Reason* constant
}

func runPrune(ctx context.Context, a *app, _ []string) error {
	p := &a.opts.policy
	switch {
	case p.KeepLast < 0:
		return usagef("--keep-last %d: want a number of images, 1 or more", p.KeepLast)
	case p.OlderThan < 0:
		return usagef("--older-than %s: want a positive duration", p.OlderThan)
	case p.MaxSize < 0:
		return usagef("--max-size %d: want a positive size", p.MaxSize)
	case p.KeepLast == 0 && p.OlderThan == 0 && p.Until.IsZero() && p.MaxSize == 0 && !p.Untagged:
		return usagef("no rule: give --keep-last, --older-than, --filter until=TIME, --max-size or --untagged")
	}
	if err := p.Validate(); err != nil {
		return &usageError{err}
	}
	return a.withWriteOrDry(a.opts.policy.DryRun)(ctx, func(s *store.Store) error {
		res, err := s.Prune(ctx, a.opts.policy)
		if err != nil {
			return err
		}
		if a.json() {
			out := pruneOutput{DryRun: res.DryRun, freedJSON: freedOf(&res.Result), Removed: []prunedRow{}, Recovery: wouldRecover(res.Recovery),
				SizeBefore: res.SizeBefore, SizeAfter: res.SizeAfter, OverBudget: res.OverBudget}
			for _, r := range res.Removed {
				out.Removed = append(out.Removed, prunedRow{entryRef: refOf(r.Name), Digest: r.Digest, Reason: r.Reason})
			}
			return a.printJSON(out)
		}
		verb, freed := "removed", "freed"
		if res.DryRun {
			verb, freed = "would remove", "would free"
		}
		a.printWouldRecover(res.Recovery)
		tw := a.table()
		for _, r := range res.Removed {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", verb, displayName(r.Name), r.Digest, r.Reason)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "%s %s; %s %s, %s; size %s -> %s\n", verb, plural(len(res.Removed), "reference", "references"),
			freed, plural(len(res.Freed), "blob", "blobs"), sizeWithBytes(res.BytesFreed), humanSize(res.SizeBefore), humanSize(res.SizeAfter))
		if res.OverBudget {
			fmt.Fprintf(a.stdout, "over budget: %s kept, more than --max-size %s; what is left is protected by --keep-last or not matched by the filters\n",
				humanSize(res.SizeAfter), humanSize(a.opts.policy.MaxSize))
		}
		a.warnPinned(res.Pinned, -1)
		return nil
	})
}

// printWouldRecover writes, for a dry run, what the recovery a real run
// does first would do (recount, finish a transaction): the dry run did
// none of it.
func (a *app) printWouldRecover(acts []recovery.Action) {
	for _, act := range acts {
		line := act.Kind
		if act.Txn != 0 {
			line += fmt.Sprintf(" txn %d", act.Txn)
		}
		fmt.Fprintf(a.stdout, "would first %s: %s\n", line, act.Detail)
	}
}
