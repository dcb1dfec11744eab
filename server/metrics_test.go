package server

import (
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape gets m's Handler in the text format and parses it.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
		t.Fatalf("scrape: status %d, Content-Type %q: %s", w.Code, w.Header().Get("Content-Type"), w.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(w.Body)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	return fams
}

// metric returns the series of the family name with exactly the labels
// of the name, value pairs, or nil.
func metric(fams map[string]*dto.MetricFamily, name string, labels ...string) *dto.Metric {
	f := fams[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels)/2 {
			continue
		}
		for i := 0; i < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return m
	}
	return nil
}

// value returns the value of a counter or gauge series, or the count of
// a histogram series; the series must exist.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	m := metric(fams, name, labels...)
	switch {
	case m == nil:
		t.Errorf("no series %s%v", name, labels)
		return math.NaN()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	t.Errorf("series %s%v is not a counter, gauge or histogram", name, labels)
	return math.NaN()
}

// sum returns the sum of a histogram series, which must exist.
func sum(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	m := metric(fams, name, labels...)
	if m == nil || m.Histogram == nil {
		t.Errorf("no histogram series %s%v", name, labels)
		return math.NaN()
	}
	return m.GetHistogram().GetSampleSum()
}

func TestMetricsWrap(t *testing.T) {
	m := NewMetrics(nil)
	var inFlight float64
	hd := m.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch routeOf(r.Method, r.URL.Path) {
		case routeBlob:
			io.WriteString(w, "hello")
		case routeUpload:
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusCreated)
		case routeTags:
			inFlight = value(t, scrape(t, m), "ocistore_http_requests_in_flight")
			time.Sleep(5 * time.Millisecond)
		default:
			http.Error(w, "nope", http.StatusNotFound)
		}
	}))
	serve := func(method, path, body string) {
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		hd.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(method, path, rd))
	}
	serve("GET", "/v2/a/blobs/sha256:1", "")
	serve("GET", "/v2/b/c/blobs/sha256:2", "")
	serve("PUT", "/v2/a/blobs/uploads/u1?digest=sha256:1", "0123456789")
	serve("GET", "/v2/a/manifests/latest", "")
	serve("GET", "/v2/a/tags/list", "")
	serve("BREW", "/v2/a/manifests/latest", "")

	fams := scrape(t, m)
	if inFlight != 1 {
		t.Errorf("in flight during a request: %v, want 1", inFlight)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"ocistore_http_requests_total", []string{"route", "blob", "method", "GET", "code", "200"}, 2},
		{"ocistore_http_requests_total", []string{"route", "upload", "method", "PUT", "code", "201"}, 1},
		{"ocistore_http_requests_total", []string{"route", "manifest", "method", "GET", "code", "404"}, 1},
		{"ocistore_http_requests_total", []string{"route", "manifest", "method", "other", "code", "404"}, 1},
		{"ocistore_http_requests_total", []string{"route", "tags", "method", "GET", "code", "200"}, 1},
		{"ocistore_http_request_duration_seconds", []string{"route", "blob", "method", "GET"}, 2},
		{"ocistore_http_request_duration_seconds", []string{"route", "tags", "method", "GET"}, 1},
		{"ocistore_http_response_bytes_total", []string{"route", "blob"}, 10},
		{"ocistore_http_response_bytes_total", []string{"route", "manifest"}, 10}, // "nope\n" twice
		{"ocistore_http_request_bytes_total", []string{"route", "upload"}, 10},
		{"ocistore_http_request_bytes_total", []string{"route", "blob"}, 0},
		{"ocistore_http_requests_in_flight", nil, 0},
	} {
		if got := value(t, fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if s := sum(t, fams, "ocistore_http_request_duration_seconds", "route", "tags", "method", "GET"); s < 0.005 || s > 10 {
		t.Errorf("duration of the tags request %vs, want at least its 5ms sleep", s)
	}
	if len(fams["ocistore_http_requests_total"].GetMetric()) != 5 {
		t.Errorf("%d series of ocistore_http_requests_total, want 5", len(fams["ocistore_http_requests_total"].GetMetric()))
	}
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if fams[name] == nil {
			t.Errorf("%s missing: the Go or the process collector is not registered", name)
		}
	}
}

func TestMetricsRecorders(t *testing.T) {
	m := NewMetrics(nil)
	fams := scrape(t, m)
	// The known label values start at 0.
	for _, c := range [][]string{
		{"ocistore_cache_hits_total", "kind", "blob"},
		{"ocistore_cache_misses_total", "kind", "manifest"},
		{"ocistore_upstream_fetches_total", "kind", "blob", "result", "error"},
		{"ocistore_maintenance_runs_total", "kind", "gc", "result", "ok"},
		{"ocistore_maintenance_duration_seconds", "kind", "prune"},
		{"ocistore_store_transaction_duration_seconds", "op", "upload_commit"},
		{"ocistore_store_transactions_total", "op", "put_manifest", "result", "error"},
		{"ocistore_store_lock_wait_seconds"},
		{"ocistore_upload_sessions_open"},
	} {
		if got := value(t, fams, c[0], c[1:]...); got != 0 {
			t.Errorf("%s%v = %v before any event, want 0", c[0], c[1:], got)
		}
	}

	fail := errors.New("fail")
	m.CacheHit("blob")
	m.CacheHit("blob")
	m.CacheHit("manifest")
	m.CacheMiss("blob")
	m.UpstreamFetch("blob", 1000, nil)
	m.UpstreamFetch("blob", 24, fail)
	m.UpstreamFetch("manifest", 0, fail)
	m.Maintenance("gc", 2*time.Second, 4096, 3, nil)
	m.Maintenance("gc", time.Second, 0, 0, fail)
	m.Maintenance("prune", 500*time.Millisecond, 100, 2, nil)
	m.LockWait(3 * time.Millisecond)
	m.LockWait(7 * time.Millisecond)
	m.Txn("put_manifest", 20*time.Millisecond, nil)
	m.Txn("put_manifest", 30*time.Millisecond, fail)
	m.Txn("tag", time.Millisecond, nil)
	m.Uploads(5)
	m.Uploads(3)

	fams = scrape(t, m)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"ocistore_cache_hits_total", []string{"kind", "blob"}, 2},
		{"ocistore_cache_hits_total", []string{"kind", "manifest"}, 1},
		{"ocistore_cache_misses_total", []string{"kind", "blob"}, 1},
		{"ocistore_cache_misses_total", []string{"kind", "manifest"}, 0},
		{"ocistore_upstream_fetches_total", []string{"kind", "blob", "result", "ok"}, 1},
		{"ocistore_upstream_fetches_total", []string{"kind", "blob", "result", "error"}, 1},
		{"ocistore_upstream_fetches_total", []string{"kind", "manifest", "result", "error"}, 1},
		{"ocistore_upstream_fetched_bytes_total", []string{"kind", "blob"}, 1024},
		{"ocistore_maintenance_runs_total", []string{"kind", "gc", "result", "ok"}, 1},
		{"ocistore_maintenance_runs_total", []string{"kind", "gc", "result", "error"}, 1},
		{"ocistore_maintenance_runs_total", []string{"kind", "prune", "result", "ok"}, 1},
		{"ocistore_maintenance_duration_seconds", []string{"kind", "gc"}, 2},
		{"ocistore_maintenance_freed_bytes_total", []string{"kind", "gc"}, 4096},
		{"ocistore_maintenance_freed_bytes_total", []string{"kind", "prune"}, 100},
		{"ocistore_maintenance_removed_items_total", []string{"kind", "gc"}, 3},
		{"ocistore_maintenance_removed_items_total", []string{"kind", "prune"}, 2},
		{"ocistore_store_lock_wait_seconds", nil, 2},
		{"ocistore_store_transaction_duration_seconds", []string{"op", "put_manifest"}, 2},
		{"ocistore_store_transaction_duration_seconds", []string{"op", "tag"}, 1},
		{"ocistore_store_transactions_total", []string{"op", "put_manifest", "result", "ok"}, 1},
		{"ocistore_store_transactions_total", []string{"op", "put_manifest", "result", "error"}, 1},
		{"ocistore_store_transactions_total", []string{"op", "tag", "result", "ok"}, 1},
		{"ocistore_upload_sessions_open", nil, 3},
	} {
		if got := value(t, fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"ocistore_maintenance_duration_seconds", []string{"kind", "gc"}, 3},
		{"ocistore_store_lock_wait_seconds", nil, 0.010},
		{"ocistore_store_transaction_duration_seconds", []string{"op", "put_manifest"}, 0.050},
	} {
		if got := sum(t, fams, c.name, c.labels...); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("sum of %s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	// The lock wait histogram has the latency buckets: 100µs to 30s.
	h := metric(fams, "ocistore_store_lock_wait_seconds").GetHistogram()
	b := h.GetBucket()
	if len(b) != len(latencyBuckets)+1 || b[0].GetUpperBound() != 0.0001 || b[len(b)-2].GetUpperBound() != 30 || !math.IsInf(b[len(b)-1].GetUpperBound(), 1) {
		t.Errorf("lock wait buckets %v, want %v and +Inf", b, latencyBuckets)
	}
	for _, bk := range b {
		want := uint64(0)
		if bk.GetUpperBound() >= 0.007 {
			want = 2
		} else if bk.GetUpperBound() >= 0.003 {
			want = 1
		}
		if bk.GetCumulativeCount() != want {
			t.Errorf("lock wait bucket le=%v: %d, want %d", bk.GetUpperBound(), bk.GetCumulativeCount(), want)
		}
	}
}

func TestMetricsPanic(t *testing.T) {
	m := NewMetrics(nil)
	hd := m.Wrap(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") }))
	if p := servePanicking(hd, httptest.NewRequest(http.MethodGet, "/v2/a/manifests/x", nil)); p != "boom" {
		t.Fatalf("panic %v after Wrap, want the handler's \"boom\"", p)
	}
	hd = m.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		panic(http.ErrAbortHandler)
	}))
	if p := servePanicking(hd, httptest.NewRequest(http.MethodGet, "/v2/a/manifests/x", nil)); p != http.ErrAbortHandler {
		t.Fatalf("panic %v after Wrap, want http.ErrAbortHandler", p)
	}
	fams := scrape(t, m)
	if got := value(t, fams, "ocistore_http_requests_total", "route", "manifest", "method", "GET", "code", "500"); got != 1 {
		t.Errorf("requests that panicked before a status: %v with code 500, want 1", got)
	}
	if got := value(t, fams, "ocistore_http_requests_total", "route", "manifest", "method", "GET", "code", "202"); got != 1 {
		t.Errorf("requests aborted after a 202: %v with code 202, want 1", got)
	}
	if got := value(t, fams, "ocistore_http_requests_in_flight"); got != 0 {
		t.Errorf("in flight after the panics: %v, want 0", got)
	}
}

func TestMetricsSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	m1, m2 := NewMetrics(reg), NewMetrics(reg) // the second shares the first's metrics
	m1.CacheHit("blob")
	m2.CacheHit("blob")
	fams := scrape(t, m1)
	if got := value(t, fams, "ocistore_cache_hits_total", "kind", "blob"); got != 2 {
		t.Errorf("hits counted through two Metrics of one registry: %v, want 2", got)
	}
	if fams["go_goroutines"] != nil {
		t.Error("NewMetrics registered the Go collector in a registry it was given")
	}

	// A metric of the same name with other labels: NewMetrics panics.
	reg = prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ocistore_cache_hits_total", Help: "other"}, []string{"other"}))
	func() {
		defer func() {
			if p := recover(); p == nil {
				t.Error("NewMetrics with a conflicting metric registered: no panic")
			}
		}()
		NewMetrics(reg)
	}()

	// A Registerer that is not a Gatherer: Handler serves the default
	// gatherer.
	m := NewMetrics(prometheus.WrapRegistererWith(prometheus.Labels{"instance_id": t.Name()}, prometheus.DefaultRegisterer))
	m.Uploads(7)
	if got := value(t, scrape(t, m), "ocistore_upload_sessions_open", "instance_id", t.Name()); got != 7 {
		t.Errorf("upload sessions through the default gatherer: %v, want 7", got)
	}
}

func TestMetricsNil(t *testing.T) {
	var m *Metrics
	m.CacheHit("blob")
	m.CacheMiss("blob")
	m.UpstreamFetch("blob", 1, nil)
	m.Maintenance("gc", time.Second, 1, 1, nil)
	m.LockWait(time.Second)
	m.Txn("tag", time.Second, nil)
	m.Uploads(1)
	w := httptest.NewRecorder()
	m.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	})).ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
	if w.Code != http.StatusTeapot {
		t.Errorf("nil Metrics' Wrap: status %d, want the handler's 418", w.Code)
	}
	w = httptest.NewRecorder()
	m.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if w.Code != http.StatusNotFound {
		t.Errorf("nil Metrics' Handler: status %d, want 404", w.Code)
	}
}

func TestMethodLabel(t *testing.T) {
	for in, want := range map[string]string{
		"GET": "GET", "HEAD": "HEAD", "PUT": "PUT", "POST": "POST", "PATCH": "PATCH",
		"DELETE": "DELETE", "OPTIONS": "OPTIONS", "get": "other", "TRACE": "other", "": "other",
	} {
		if got := methodLabel(in); got != want {
			t.Errorf("methodLabel(%q) = %q, want %q", in, got, want)
		}
	}
}
