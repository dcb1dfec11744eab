// Package crash holds named crash points: places in the durability protocol
// where a test can make the process die as if the power had been cut
// between two steps.
//
// DESIGN.md §4.7 maps each point to its step of the protocol (§4.2 for a
// transaction, §4.5 for an ingest, §4.6 for init and journal creation) and
// says what is durable there; §5.3 says what recovery does after a crash at
// each.
//
// Crash points exist only in builds with the build tag crashpoints (go
// build -tags crashpoints, go test -tags crashpoints): the crash tests, the
// binaries they kill and make demo's power-cut scene. In every other build,
// the default one and any program that embeds package store, Point is an
// empty function the compiler inlines away, nothing reads the environment,
// and Enabled is false: OCISTORE_CRASHPOINT means nothing to them. The names
// of the points (the constants, All) exist in every build, for the tests
// that arm them in a child process.
//
// In a build with the tag, a process is armed through the environment
// variable OCISTORE_CRASHPOINT, read once at start: "NAME" kills the process
// (SIGKILL, no deferred code, no buffered output) the first time Point(NAME)
// is reached; "NAME@K" kills it at the K-th time (1-based). With the suffix
// ":pause" ("NAME@K:pause") the process instead writes "ocistore:
// crashpoint NAME reached\n" to stderr and blocks forever, so that a test can
// cut the power under it (power-loss tests on a real file system) before
// killing it. Tests that stop the protocol in their own process use errorfs
// hooks (internal/testing/errorfs), not crash points: there is no arming
// but the environment, and no process-global switch.
package crash

// EnvVar names the environment variable that arms a crash point in a child
// process built with the tag crashpoints (other builds never read it).
const EnvVar = "OCISTORE_CRASHPOINT"

// The crash points of the protocol, in the order a transaction reaches them.
const (
	// Transaction (DESIGN.md §4.2: the step of each point is in its comment).
	IndexTempWritten  = "index-temp-written" // step 2, before the journal commit: temp index written, not yet synced (recovery: a replay's temp index)
	TxnJournaled      = "txn-journaled"      // step 2 done: record durable, new index.json prepared under a temp name
	IndexRenamed      = "index-renamed"      // step 3: renamed over index.json, layout dir not synced
	IndexSynced       = "index-synced"       // step 3 done: layout dir synced (commit point)
	BlobUnlinked      = "blob-unlinked"      // step 4: after each unlink, before the blob dir sync
	BlobDirSynced     = "blob-dir-synced"    // step 4 done: blob dirs synced, record not cleared
	TxnCleared        = "txn-cleared"        // step 5 done
	TrashUnlinked     = "trash-unlinked"     // after step 4 through the trash (DESIGN.md §11): after each unlink of a trash file
	IngestWritten     = "ingest-written"     // ingest (DESIGN.md §4.5): temp file written and synced, not renamed
	IngestRenamed     = "ingest-renamed"     // ingest: renamed into blobs/, dir not synced
	IngestSynced      = "ingest-synced"      // ingest: blob dir synced, journal not told
	RecoverReplayed   = "recover-replayed"   // recovery (DESIGN.md §5.2): index.json rewritten from the record
	RecoverUnlinked   = "recover-unlinked"   // recovery: after each unlink of a pending record
	RecoverRecounted  = "recover-recounted"  // recovery: before the commit that stores a recount (and drops a record rolled back)
	JournalCreated    = "journal-created"    // adoption (DESIGN.md §4.6): db file created, directory not synced
	LayoutInitialized = "layout-initialized" // init: oci-layout written, index.json not yet
)

// All lists every crash point, for tests that iterate over them.
var All = []string{
	IndexTempWritten, TxnJournaled, IndexRenamed, IndexSynced, BlobUnlinked, BlobDirSynced, TxnCleared, TrashUnlinked,
	IngestWritten, IngestRenamed, IngestSynced,
	RecoverReplayed, RecoverUnlinked, RecoverRecounted, JournalCreated, LayoutInitialized,
}

// PausedMessage is what a paused crash point writes to stderr, with its name.
const PausedMessage = "ocistore: crashpoint %s reached\n"
