package fsck

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/recovery"
)

// A check beside a live writer (DESIGN.md §17.2).
//
// CheckDir never waits for a writer: it reads a copy of the journal as the
// last commit left it. A writer that holds the journal while the layout is
// checked is reported as a transaction in flight (a notice, not damage):
// its pending record is that transaction, not one a crash interrupted. A
// writer that commits during the check can make the check see one version
// of index.json and the blobs of another: the check then runs again, up to
// recheckTries times (a deep check, whose cost is the reading of every
// blob, is not run again), and says when the layout never held still.

// recheckTries is how many times a check that saw the layout change runs.
const recheckTries = 3

// CheckDir checks the layout in dir as it is (see store.CheckDir), without
// waiting for a writer.
func CheckDir(ctx context.Context, dir string, o *recovery.CheckOptions) (*recovery.Report, error) {
	var want string
	deep := false
	if o != nil {
		want, deep = o.SharedBlobDir, o.Deep
	}
	root := dir
	if shared, err := protocol.SharedDirFor(dir, want); err == nil && shared != "" {
		root = shared
	}
	jpath := filepath.Join(root, protocol.JournalFile)
	for try := 1; ; try++ {
		before := generationOf(dir, jpath)
		rep, err := checkDirOnce(ctx, dir, o)
		if err != nil {
			return nil, err
		}
		after := generationOf(dir, jpath)
		still := before.same(after)
		if !still && !deep && try < recheckTries {
			continue
		}
		if before.busy || after.busy || !still {
			markInFlight(rep, still)
		}
		return rep, nil
	}
}

// generation is what changes when a writer commits: the journal's last
// commit and index.json's stamp; and whether a writer holds the journal.
type generation struct {
	txid  uint64
	index fsio.Stamp
	busy  bool
}

func (g generation) same(h generation) bool { return g.txid == h.txid && g.index == h.index }

func generationOf(dir, jpath string) generation {
	var g generation
	if protocol.JournalAtIsRegular(filepath.Dir(filepath.Dir(jpath))) {
		g.busy, _ = journal.Busy(jpath)
		g.txid = journal.LastTxID(jpath)
	}
	if fi, err := os.Lstat(filepath.Join(dir, layout.IndexFile)); err == nil {
		g.index = fsio.StampOf(fi)
	}
	return g
}

// markInFlight turns rep's pending records into transactions in flight
// and says that a writer held the journal (still: the layout did not
// change during the check).
func markInFlight(rep *recovery.Report, still bool) {
	n := 0
	for i, p := range rep.Problems {
		switch p.Kind {
		case recovery.KindPending:
			rep.Problems[i].Kind, rep.Problems[i].Severity = recovery.KindInFlight, recovery.SeverityOf(recovery.KindInFlight)
			rep.Problems[i].Detail = fmt.Sprintf("%s in another process, which holds the journal (not interrupted: no recovery needed)", trimPendingAdvice(p.Detail))
			n++
		case recovery.KindTempFile:
			// The writer's own: its prepared index.json, an ingest.
			rep.Problems[i].Kind, rep.Problems[i].Severity = recovery.KindInFlight, recovery.SeverityOf(recovery.KindInFlight)
			rep.Problems[i].Detail = "temp file of the writer that holds the journal"
		}
	}
	switch {
	case !still:
		rep.Problems = append(rep.Problems, finding(recovery.KindInFlight, "", protocol.JournalFile,
			"a writer committed during the check, each time it ran: what it reports may be a moment of that writer's transaction; run fsck again"))
	case n == 0:
		rep.Problems = append(rep.Problems, finding(recovery.KindInFlight, "", protocol.JournalFile,
			"another process holds the journal (a transaction in flight); the check read the journal as its last commit left it"))
	}
}

// trimPendingAdvice is a pending problem's detail without the advice to
// recover, in the words of a transaction in flight.
func trimPendingAdvice(d string) string {
	d = strings.TrimSuffix(d, ": run ocistore recover")
	return strings.Replace(d, " is unfinished", " is in flight", 1)
}
