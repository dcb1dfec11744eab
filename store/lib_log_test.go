package store_test

import (
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// recordHandler keeps every record it is given.
type recordHandler struct {
	mu   *sync.Mutex
	recs *[]slog.Record
}

func newRecordHandler() recordHandler {
	return recordHandler{mu: &sync.Mutex{}, recs: &[]slog.Record{}}
}

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.recs = append(*h.recs, r.Clone())
	return nil
}
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordHandler) WithGroup(string) slog.Handler      { return h }

func (h recordHandler) records() []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]slog.Record(nil), *h.recs...)
}

// libExercise runs open, writes, a recovery that has work to do (a
// leftover temp file, an external change of index.json) and a delete.
func libExercise(t *testing.T, dir string, o *store.Options) {
	t.Helper()
	ctx := context.Background()
	s, err := store.Open(ctx, dir, o)
	if err != nil {
		t.Fatal(err)
	}
	b := testutil.NewBuilder(t, s, 5)
	m := b.Manifest([]v1.Descriptor{b.Random(50)}, 1)
	b.Tag(m, "a")
	b.Tag(b.Manifest(nil, 1), "b")
	s.Close()
	// Work for the next recovery.
	if err := os.WriteFile(filepath.Join(dir, ".index.json123456"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	ixPath := filepath.Join(dir, "index.json")
	raw, _ := os.ReadFile(ixPath)
	if err := os.WriteFile(ixPath, append(raw, ' ', '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err = store.Open(ctx, dir, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Check(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

// TestLogDiscardByDefault: with no logger the library writes nothing to the
// default slog logger, the log package or stderr.
func TestLogDiscardByDefault(t *testing.T) {
	h := newRecordHandler()
	oldDefault := slog.Default()
	slog.SetDefault(slog.New(h))
	defer slog.SetDefault(oldDefault)
	var logBuf bytes.Buffer
	oldOut, oldFlags := log.Writer(), log.Flags()
	defer log.SetOutput(oldOut)
	defer log.SetFlags(oldFlags)

	oldStderr := os.Stderr
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	os.Stderr = w
	log.SetOutput(&logBuf) // after slog.SetDefault, which redirects log to h
	captured := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); captured <- b }()
	func() {
		defer func() { os.Stderr = oldStderr }()
		libExercise(t, t.TempDir(), nil)
	}()
	w.Close()
	stderr := <-captured

	if recs := h.records(); len(recs) > 0 {
		t.Errorf("the library logged %d records to slog.Default, first: %s", len(recs), recs[0].Message)
	}
	if logBuf.Len() > 0 {
		t.Errorf("the library wrote to the log package: %q", logBuf.String())
	}
	if len(stderr) > 0 {
		t.Errorf("the library wrote to stderr: %q", stderr)
	}
}

// TestLogRecoveryAtInfo: with a logger, recovery actions are logged at Info
// (or above), with the path or digest they concern; per-operation lines are
// Debug.
func TestLogRecoveryAtInfo(t *testing.T) {
	h := newRecordHandler()
	libExercise(t, t.TempDir(), &store.Options{Logger: slog.New(h)})
	recs := h.records()
	var tempRemoved, recount, debug bool
	for _, r := range recs {
		msg := strings.ToLower(r.Message)
		attrs := ""
		r.Attrs(func(a slog.Attr) bool { attrs += a.Key + "=" + a.Value.String() + " "; return true })
		switch {
		case strings.Contains(msg, "temp"):
			if r.Level < slog.LevelInfo {
				t.Errorf("recovery action %q logged at %s", r.Message, r.Level)
			}
			if strings.Contains(attrs, ".index.json123456") {
				tempRemoved = true
			}
		case strings.Contains(msg, "recount"), strings.Contains(msg, "changed outside"):
			if r.Level < slog.LevelInfo {
				t.Errorf("recovery action %q logged at %s", r.Message, r.Level)
			}
			recount = true
		}
		if r.Level == slog.LevelDebug {
			debug = true
		}
		if r.Level >= slog.LevelError {
			t.Errorf("error logged in a healthy run: %s %s", r.Message, attrs)
		}
	}
	if !tempRemoved {
		t.Errorf("removing the leftover temp file was not logged with its path: %v", messages(recs))
	}
	if !recount {
		t.Errorf("the recount after the external change was not logged: %v", messages(recs))
	}
	if !debug {
		t.Errorf("no Debug line per operation: %v", messages(recs))
	}
}

func messages(recs []slog.Record) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.Level.String()+" "+r.Message)
	}
	return out
}
