package fsio

// The fsyncs of the protocol, each named by its purpose (DESIGN.md §3.3). A test file
// system can leave out the fsyncs of one purpose (SyncSkipper), to prove
// that the crash harnesses notice when it is missing; the OS file system
// never leaves one out.
const (
	SyncIndexFile  = "index-file"  // the new index.json's data, before its rename
	SyncLayoutDir  = "layout-dir"  // the layout root, after index.json is renamed
	SyncBlobDir    = "blob-dir"    // blobs/<alg>, after a transaction's unlinks
	SyncIngestFile = "ingest-file" // an ingested blob's data, before its rename
	SyncIngestDir  = "ingest-dir"  // blobs/<alg>, after an ingested blob's rename
	SyncJournalDir = "journal-dir" // .ocistore, after the journal is created
)

// SyncPurposes lists every purpose.
var SyncPurposes = []string{SyncIndexFile, SyncLayoutDir, SyncBlobDir, SyncIngestFile, SyncIngestDir, SyncJournalDir}

// SyncSkipper is implemented by a file system that leaves out the fsyncs
// of some purposes (tests only: see internal/testing/errorfs). SyncDirFor
// and SyncFileFor ask it before each fsync they make.
type SyncSkipper interface {
	SkipSync(purpose string) bool
}

// skipSync reports whether fsys leaves out the fsyncs of purpose.
func skipSync(fsys FS, purpose string) bool {
	s, ok := fsys.(SyncSkipper)
	return ok && s.SkipSync(purpose)
}

// SyncDirFor syncs dir for one purpose of the protocol; a failure is a
// SyncError (a durability failure).
func SyncDirFor(fsys FS, purpose, dir string) error {
	if skipSync(fsys, purpose) {
		return nil
	}
	if err := fsys.SyncDir(dir); err != nil {
		return &SyncError{Path: dir, Err: err}
	}
	return nil
}

// SyncFileFor syncs f, a file of fsys being written, for one purpose of
// the protocol; a failure is a SyncError (a durability failure).
func SyncFileFor(fsys FS, purpose string, f TempFile) error {
	if skipSync(fsys, purpose) {
		return nil
	}
	if err := f.Sync(); err != nil {
		return &SyncError{Path: f.Name(), Err: err}
	}
	return nil
}
