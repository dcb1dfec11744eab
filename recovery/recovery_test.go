package recovery_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/ocistore/ocistore/recovery"
)

// TestSeverity: the notices are exactly the states a healthy layout shared
// with other tools has (not adopted yet, index.json written by another
// tool, unreferenced blobs, a gone process's leftovers); every other kind,
// one this build does not know included, is a problem. A report is OK
// when it has notices only, and its JSON gives each finding's severity.
func TestSeverity(t *testing.T) {
	notices := []string{recovery.KindJournalMissing, recovery.KindExternalChange, recovery.KindOrphan, recovery.KindTempFile}
	problems := []string{recovery.KindLayoutCorrupt, recovery.KindIndexMissing, recovery.KindIndexCorrupt, recovery.KindDangling,
		recovery.KindSizeMismatch, recovery.KindDigestMismatch, recovery.KindManifestCorrupt, recovery.KindNotRegular,
		recovery.KindUnknownFile, recovery.KindPending, recovery.KindJournalCorrupt, recovery.KindJournalNewer,
		recovery.KindRefcount, recovery.KindNotDirectory, recovery.KindBlobsElsewhere, recovery.KindUnreadable, "a-kind-of-a-newer-build"}
	for _, k := range notices {
		if got := recovery.SeverityOf(k); got != recovery.SeverityNotice {
			t.Errorf("SeverityOf(%s) = %q, want notice", k, got)
		}
	}
	for _, k := range problems {
		if got := recovery.SeverityOf(k); got != recovery.SeverityProblem {
			t.Errorf("SeverityOf(%s) = %q, want problem", k, got)
		}
	}

	finding := func(kind string) recovery.Problem {
		return recovery.Problem{Kind: kind, Severity: recovery.SeverityOf(kind), Detail: "d"}
	}
	r := &recovery.Report{Problems: []recovery.Problem{finding(recovery.KindOrphan), finding(recovery.KindJournalMissing)}}
	if p, n := r.Count(); !r.OK() || p != 0 || n != 2 {
		t.Errorf("notices only: OK %v, count %d, %d", r.OK(), p, n)
	}
	r.Problems = append(r.Problems, finding(recovery.KindDangling), recovery.Problem{Kind: recovery.KindOrphan})
	if p, n := r.Count(); r.OK() || p != 2 || n != 2 { // no severity: a problem
		t.Errorf("with a problem: OK %v, count %d, %d", r.OK(), p, n)
	}
	b, err := json.Marshal(finding(recovery.KindExternalChange))
	if err != nil || !strings.Contains(string(b), `"kind":"external-change","severity":"notice"`) {
		t.Errorf("JSON %s, %v", b, err)
	}
}
