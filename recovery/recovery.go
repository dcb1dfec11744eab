// Package recovery holds what ocistore's recovery tool reports: the
// findings of a check (Report, Problem, their kinds and their Severity:
// damage, or a notice of a state that is normal for a layout other tools
// share), the options of a
// check, what recovery and repair did (Action and its kinds), and the
// entries of index.json a repair could not keep whole (Broken, BadEntry).
// They are plain data, encoded as `ocistore fsck --format json` prints them.
//
// The work is done by package store, under its writer lock: Open and every
// write transaction replay or roll back what an interrupted process left
// (store.Store.Recover runs it on demand), store.Store.Check and
// store.CheckDir check a layout, store.Repair repairs one. Nothing here
// reads or changes a layout.
package recovery

import (
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
)

// Problem kinds reported by Check.
const (
	KindLayoutCorrupt   = "layout-corrupt"   // oci-layout missing or unparseable
	KindIndexMissing    = "index-missing"    // index.json missing
	KindIndexCorrupt    = "index-corrupt"    // index.json unparseable or not an image index
	KindDangling        = "dangling"         // a reachable descriptor has no blob
	KindSizeMismatch    = "size-mismatch"    // a reachable blob's size differs from its descriptor
	KindDigestMismatch  = "digest-mismatch"  // a manifest's bytes do not hash to its digest
	KindManifestCorrupt = "manifest-corrupt" // a reachable manifest does not parse
	KindNotRegular      = "not-regular"      // a blob path is a symlink, directory or device
	KindOrphan          = "orphan"           // a blob nothing reachable uses
	KindUnknownFile     = "unknown-file"     // a file under blobs/ that is not named by a digest
	KindTempFile        = "temp-file"        // a leftover temp file
	KindPending         = "pending"          // an unfinished journal record
	KindJournalMissing  = "journal-missing"  // no journal database (layout not adopted yet)
	KindJournalCorrupt  = "journal-corrupt"  // the journal database fails bbolt's check or cannot be read
	KindJournalNewer    = "journal-newer"    // the journal was written by a newer ocistore (left as it is)
	KindExternalChange  = "external-change"  // index.json differs from the last one committed through the journal
	KindRefcount        = "refcount"         // a stored reference count differs from a recount
	// KindNotDirectory: a directory of the layout is a symlink (never
	// followed), a file or a device: .ocistore, blobs/, an algorithm
	// directory of blobs/ (blobs/sha256), or .ocistore/ingest, quarantine,
	// trash or owners. What is under it is not looked at.
	KindNotDirectory = "not-directory"
	// KindBlobsElsewhere: blobs/ is missing or holds no blob, and most
	// entries of index.json have no blob: the blobs most likely live in a
	// shared blob directory the check was not told about. It stands first,
	// in place of one dangling problem per missing blob.
	KindBlobsElsewhere = "blobs-elsewhere"
	// KindUnreadable: a blob file could not be read to the end (an I/O
	// error: the disk may be failing). Only the deep check reads blobs.
	KindUnreadable = "unreadable"
	// KindInFlight: another process held the journal while the layout
	// was checked (a transaction in flight): its pending record is that
	// transaction's, not an interrupted one, and the layout may have
	// changed during the check.
	KindInFlight = "in-flight"
)

// BlobsElsewhereHint starts the detail of a blobs-elsewhere problem.
const BlobsElsewhereHint = "blobs live elsewhere? pass --shared-blob-dir"

// Severity says what a finding of Check means.
type Severity string

const (
	// SeverityProblem: damage, or a state that needs ocistore (recover,
	// fsck --repair) or a person before the layout is whole. fsck exits 3.
	SeverityProblem Severity = "problem"
	// SeverityNotice: a state that is normal for a layout other tools
	// write too (skopeo, umoci), or that the next ocistore command clears
	// by itself. fsck prints it and exits 0: a healthy layout has notices.
	SeverityNotice Severity = "notice"
)

// noticeKinds are the kinds whose findings are notices: a kind is made a
// notice by one line here. Every other kind, one unknown to this build
// included, is a problem.
var noticeKinds = map[string]bool{
	KindJournalMissing: true, // not adopted yet: the next ocistore write adopts it
	KindExternalChange: true, // another tool wrote index.json: the next write recounts
	KindOrphan:         true, // unreferenced (umoci rm before umoci gc): gc removes it
	KindTempFile:       true, // a leftover of a process that is gone: the next open removes it
	KindInFlight:       true, // a live writer's transaction, not an interrupted one
}

// SeverityOf returns the severity of the findings of kind.
func SeverityOf(kind string) Severity {
	if noticeKinds[kind] {
		return SeverityNotice
	}
	return SeverityProblem
}

// Problem is one finding of Check: a problem or a notice (Severity).
type Problem struct {
	Kind string `json:"kind"`
	// Severity is SeverityOf(Kind): Check sets it. Empty counts as a
	// problem.
	Severity Severity `json:"severity"`
	Digest   string   `json:"digest,omitempty"`
	Path     string   `json:"path,omitempty"`
	Detail   string   `json:"detail"`
}

// IsNotice reports whether p is a notice, not a problem.
func (p Problem) IsNotice() bool { return p.Severity == SeverityNotice }

func (p Problem) String() string {
	s := p.Kind
	if p.Digest != "" {
		s += " " + p.Digest
	}
	if p.Path != "" {
		s += " (" + p.Path + ")"
	}
	return s + ": " + p.Detail
}

// Report is the result of Check.
type Report struct {
	Images int   `json:"images"` // entries of index.json
	Blobs  int   `json:"blobs"`  // blobs reachable from index.json
	Bytes  int64 `json:"bytes"`  // their total size
	// Problems lists every finding, problems and notices (each has its
	// Severity); it has no problem when the layout is consistent.
	Problems []Problem `json:"problems"`
	// Deep describes the hashing of a deep check; nil for a quick one.
	Deep *DeepStats `json:"deep,omitempty"`
}

// OK reports whether no problem was found: the findings, if any, are
// notices (fsck exits 0).
func (r *Report) OK() bool {
	problems, _ := r.Count()
	return problems == 0
}

// Count returns how many findings are problems and how many notices.
func (r *Report) Count() (problems, notices int) {
	for _, p := range r.Problems {
		if p.IsNotice() {
			notices++
		} else {
			problems++
		}
	}
	return problems, notices
}

// CheckOptions tune a check (store.Store.Check, store.CheckDir). A nil
// *CheckOptions is the quick check.
type CheckOptions struct {
	// Deep also re-hashes every blob file under blobs/, reachable or not,
	// and reports those whose bytes do not hash to their name
	// (digest-mismatch). Blobs are hashed in parallel, each streamed
	// through one buffer per worker: memory does not grow with blob size.
	Deep bool
	// Workers is how many blobs are hashed at once; zero means GOMAXPROCS.
	Workers int
	// Max bounds the time spent hashing. When it runs out the deep check
	// stops where it is and Report.Deep.Stopped says so; what was hashed
	// is reported. Zero means no limit.
	Max time.Duration
	// Progress, when set, is called as blob bytes are hashed with the
	// bytes hashed so far and the total, from several goroutines at once.
	Progress func(done, total int64)
	// SharedBlobDir is the shared blob directory of a layout that keeps
	// its blobs there (skopeo's --shared-blob-dir), for store.CheckDir of
	// a layout that ocistore has not adopted yet (an adopted one names its
	// directory in .ocistore/shared-blob-dir).
	SharedBlobDir string
	// LockTimeout is how long store.CheckDir waits for a writer to finish
	// (zero: 30 s; negative: not at all).
	LockTimeout time.Duration
}

// DeepStats describes the hashing of a deep check.
type DeepStats struct {
	Files       int   `json:"files"`       // blob files to hash
	Bytes       int64 `json:"bytes"`       // their total size
	HashedFiles int   `json:"hashedFiles"` // blob files hashed to the end
	HashedBytes int64 `json:"hashedBytes"` // bytes hashed (of those files)
	// Stopped is true when Max ran out before every blob was hashed.
	Stopped bool `json:"stopped,omitempty"`
}

// String words the hashing of a deep check for people.
func (s *DeepStats) String() string {
	line := fmt.Sprintf("%d of %d blobs hashed (%d of %d bytes)", s.HashedFiles, s.Files, s.HashedBytes, s.Bytes)
	if s.Stopped {
		line += ": stopped early, the time limit ran out"
	}
	return line
}

// Action kinds of a repair (besides recovery's own: roll-forward, replay,
// roll-back, recount, temp-removed).
const (
	ActionQuarantined    = "quarantined"          // a blob, or index.json, moved to the quarantine folder
	ActionIndexRestored  = "index-restored"       // index.json written from the journal's copy
	ActionJournalCreated = "journal-created"      // no journal (or an empty one): counted from the layout
	ActionJournalRebuilt = "journal-rebuilt"      // a damaged journal moved aside and built again from the layout
	ActionLayoutFile     = "layout-file-restored" // oci-layout written again
	ActionEntryDropped   = "entry-dropped"        // an index.json entry removed (--drop-broken)
	ActionOrphansFreed   = "orphans-removed"      // unreferenced blobs removed (a journaled GC)
	ActionKept           = "kept"                 // a copy of a file kept in the quarantine folder
	ActionMovedAside     = "moved-aside"          // a state directory that is not one renamed out of the way
	ActionLeasesKept     = "leases-kept"          // the leases read from a damaged journal put in the rebuilt one
	ActionPinned         = "pinned"               // a journal rebuilt without its leases: nothing freed for a while
	// ActionOrphansKept: unreferenced blobs of a shared blob directory
	// kept when a layout joins it (other layouts may use them without
	// ocistore knowing).
	ActionOrphansKept = "orphans-kept"
)

// BadEntry is an entry of index.json that cannot be used: it does not
// decode as a descriptor, its digest is malformed, of an unknown algorithm
// or tries to leave the blob directory, or its size is negative.
type BadEntry struct {
	Pos int    `json:"pos"` // position in manifests[]
	Raw string `json:"raw"` // the entry as it was, compacted (at most 512 bytes)
	Err string `json:"error"`
}

// Broken is an entry of index.json whose closure is not whole: a blob of
// its graph is missing (and has no URLs), not a regular file, of another
// size than its descriptor says, or a manifest of it cannot be read.
type Broken struct {
	Pos    int           `json:"pos"`  // position in manifests[]
	Name   string        `json:"name"` // the tag, "" for an untagged entry
	Digest digest.Digest `json:"digest"`
	Reason string        `json:"reason"` // the first problem found in its graph
}

// Action is one thing recovery did.
type Action struct {
	Kind   string `json:"kind"` // roll-forward, replay, roll-back, recount, temp-removed
	Txn    uint64 `json:"txn,omitempty"`
	Detail string `json:"detail"`
}
