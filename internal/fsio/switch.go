package fsio

import "sync"

// Durability switches: each names one fsync of the protocol (DESIGN.md
// §3.3). A test turns one off to prove that the crash harness notices when
// it is missing; in production none is ever off and a check costs one map
// lookup.
const (
	SyncIndexFile  = "index-file"  // the new index.json's data, before its rename
	SyncLayoutDir  = "layout-dir"  // the layout root, after index.json is renamed
	SyncBlobDir    = "blob-dir"    // blobs/<alg>, after a transaction's unlinks
	SyncIngestFile = "ingest-file" // an ingested blob's data, before its rename
	SyncIngestDir  = "ingest-dir"  // blobs/<alg>, after an ingested blob's rename
	SyncJournalDir = "journal-dir" // .ocistore, after the journal is created
)

// SyncPurposes lists every switch.
var SyncPurposes = []string{SyncIndexFile, SyncLayoutDir, SyncBlobDir, SyncIngestFile, SyncIngestDir, SyncJournalDir}

var disabled sync.Map // purpose -> struct{}

// DisableSync turns one fsync of the protocol off until the returned
// function is called. Tests only.
func DisableSync(purpose string) (restore func()) {
	disabled.Store(purpose, struct{}{})
	return func() { disabled.Delete(purpose) }
}

// SyncSkipped reports whether a test turned the fsync for purpose off.
func SyncSkipped(purpose string) bool {
	_, off := disabled.Load(purpose)
	return off
}

// SyncDirFor syncs dir for one purpose of the protocol; a failure is a
// SyncError (a durability failure).
func SyncDirFor(fsys FS, purpose, dir string) error {
	if SyncSkipped(purpose) {
		return nil
	}
	if err := fsys.SyncDir(dir); err != nil {
		return &SyncError{Path: dir, Err: err}
	}
	return nil
}
