// Package crash holds named crash points: places in the durability protocol
// where a test can make the process die as if the power had been cut
// between two steps. In production no crash point is armed and Point costs one
// atomic load.
//
// DESIGN.md §4.7 maps each point to its step of the protocol (§4.2 for a
// transaction, §4.5 for an ingest, §4.6 for init and journal creation) and
// says what is durable there; §5.3 says what recovery does after a crash at
// each.
//
// A process is armed through the environment variable OCISTORE_CRASHPOINT,
// read once at start: "NAME" kills the process (SIGKILL, no deferred code, no
// buffered output) the first time Point(NAME) is reached; "NAME@K" kills it at
// the K-th time (1-based). With the suffix ":pause" ("NAME@K:pause") the
// process instead writes "ocistore: crashpoint NAME reached\n" to stderr and
// blocks forever, so that a test can cut the power under it (power-loss
// tests on a real file system) before killing it. Tests in the same process
// use Arm instead.
package crash

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// EnvVar names the environment variable that arms a crash point in a child process.
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

var (
	armed atomic.Bool
	mu    sync.Mutex
	name  string
	left  int
	hook  func(string)
)

// PausedMessage is what a paused crash point writes to stderr, with its name.
const PausedMessage = "ocistore: crashpoint %s reached\n"

func init() {
	if v := os.Getenv(EnvVar); v != "" {
		var fn func(string)
		if p, ok := strings.CutSuffix(v, ":pause"); ok {
			v, fn = p, pause
		}
		n, k := v, 1
		if i := strings.LastIndexByte(v, '@'); i >= 0 {
			if c, err := strconv.Atoi(v[i+1:]); err == nil && c > 0 {
				n, k = v[:i], c
			}
		}
		Arm(n, k, fn)
	}
}

func pause(name string) {
	fmt.Fprintf(os.Stderr, PausedMessage, name)
	select {} // the test cuts the power, then kills us
}

// Arm makes the k-th call of Point(n) run fn (or kill the process when fn is
// nil). It replaces any earlier arming. Disarm undoes it.
func Arm(n string, k int, fn func(string)) {
	mu.Lock()
	defer mu.Unlock()
	name, left, hook = n, k, fn
	armed.Store(true)
}

// Disarm removes any armed crash point.
func Disarm() {
	mu.Lock()
	defer mu.Unlock()
	name, left, hook = "", 0, nil
	armed.Store(false)
}

// Point marks a named step. It does nothing unless that point is armed.
func Point(n string) {
	if !armed.Load() {
		return
	}
	mu.Lock()
	if n != name {
		mu.Unlock()
		return
	}
	left--
	if left > 0 {
		mu.Unlock()
		return
	}
	fn := hook
	name = ""
	armed.Store(false)
	mu.Unlock()
	if fn != nil {
		fn(n)
		return
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL is not deliverable late; never return into the protocol
}
