package server

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// latencyBuckets are the buckets of the latency histograms, in seconds:
// 100µs to 30s, about 2.5x apart.
var latencyBuckets = []float64{
	0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005,
	0.01, 0.025, 0.05,
	0.1, 0.25, 0.5,
	1, 2.5, 5,
	10, 30,
}

// maintenanceBuckets are the buckets of the duration of a prune or a GC, in
// seconds: 10ms to an hour.
var maintenanceBuckets = []float64{0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600}

// The label values the metrics start with (a series that exists at 0 lets
// rate() see its first event): the kinds of the cache, upstream and
// maintenance metrics, the store's transaction ops, and the results.
var (
	cacheKinds       = []string{"manifest", "blob"}
	maintenanceKinds = []string{"prune", "gc"}
	txnOps           = []string{"put_manifest", "delete", "tag", "prune", "gc", "upload_commit"}
	results          = []string{resultOK, resultError}
)

const (
	resultOK    = "ok"
	resultError = "error"
)

// resultOf is the result label of an operation that returned err.
func resultOf(err error) string {
	if err != nil {
		return resultError
	}
	return resultOK
}

// Metrics holds the Prometheus metrics of the server: of the HTTP requests
// (Wrap), of the pull-through cache and its upstream, of the store's
// maintenance, locks and transactions, and of the upload sessions. Its
// methods may be called from any goroutine. A nil *Metrics records nothing
// (and its Wrap returns the handler it is given), so that a server without
// metrics can call it all the same.
type Metrics struct {
	gatherer prometheus.Gatherer

	requests      *prometheus.CounterVec   // route, method, code
	duration      *prometheus.HistogramVec // route, method
	responseBytes *prometheus.CounterVec   // route
	requestBytes  *prometheus.CounterVec   // route
	inFlight      prometheus.Gauge

	cacheHits     *prometheus.CounterVec // kind
	cacheMisses   *prometheus.CounterVec // kind
	upstream      *prometheus.CounterVec // kind, result
	upstreamBytes *prometheus.CounterVec // kind

	maintRuns     *prometheus.CounterVec   // kind, result
	maintDuration *prometheus.HistogramVec // kind
	maintFreed    *prometheus.CounterVec   // kind
	maintRemoved  *prometheus.CounterVec   // kind

	lockWait    prometheus.Histogram
	txnDuration *prometheus.HistogramVec // op
	txns        *prometheus.CounterVec   // op, result

	uploads prometheus.Gauge
}

// NewMetrics creates the server's metrics and registers them with reg. If
// reg is nil, it registers them, with the Go runtime's and the process's
// collectors, in a new registry of its own. Metrics already registered in
// reg by an earlier NewMetrics are shared; a conflicting registration (a
// metric of the same name and other labels) panics, as
// prometheus.MustRegister does.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{}
	if reg == nil {
		r := prometheus.NewRegistry()
		r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		reg, m.gatherer = r, r
	} else if g, ok := reg.(prometheus.Gatherer); ok {
		m.gatherer = g
	} else {
		m.gatherer = prometheus.DefaultGatherer
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels))
	}
	histogram := func(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
		return register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels))
	}
	gauge := func(name, help string) prometheus.Gauge {
		return register(reg, prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help}))
	}

	m.requests = counter("ocistore_http_requests_total",
		"HTTP requests served, by route, method and status code.", "route", "method", "code")
	m.duration = histogram("ocistore_http_request_duration_seconds",
		"Time from an HTTP request to its handler's return, by route and method.", latencyBuckets, "route", "method")
	m.responseBytes = counter("ocistore_http_response_bytes_total",
		"Bytes of HTTP response bodies written, by route.", "route")
	m.requestBytes = counter("ocistore_http_request_bytes_total",
		"Bytes of HTTP request bodies read, by route.", "route")
	m.inFlight = gauge("ocistore_http_requests_in_flight",
		"HTTP requests being served.")

	m.cacheHits = counter("ocistore_cache_hits_total",
		"Pull-through cache lookups answered from the store, by kind (manifest, blob).", "kind")
	m.cacheMisses = counter("ocistore_cache_misses_total",
		"Pull-through cache lookups that had to go upstream, by kind (manifest, blob).", "kind")
	m.upstream = counter("ocistore_upstream_fetches_total",
		"Fetches from the upstream registry, by kind and result (ok, error).", "kind", "result")
	m.upstreamBytes = counter("ocistore_upstream_fetched_bytes_total",
		"Bytes fetched from the upstream registry, by kind.", "kind")

	m.maintRuns = counter("ocistore_maintenance_runs_total",
		"Maintenance runs, by kind (prune, gc) and result (ok, error).", "kind", "result")
	m.maintDuration = histogram("ocistore_maintenance_duration_seconds",
		"Duration of maintenance runs, by kind.", maintenanceBuckets, "kind")
	m.maintFreed = counter("ocistore_maintenance_freed_bytes_total",
		"Bytes freed by maintenance runs, by kind.", "kind")
	m.maintRemoved = counter("ocistore_maintenance_removed_items_total",
		"Items (images for prune, blobs for gc) removed by maintenance runs, by kind.", "kind")

	m.lockWait = register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ocistore_store_lock_wait_seconds",
		Help:    "Time spent waiting for the store's writer lock.",
		Buckets: latencyBuckets,
	}))
	m.txnDuration = histogram("ocistore_store_transaction_duration_seconds",
		"Duration of store transactions, by op.", latencyBuckets, "op")
	m.txns = counter("ocistore_store_transactions_total",
		"Store transactions, by op and result (ok, error).", "op", "result")

	m.uploads = gauge("ocistore_upload_sessions_open",
		"Blob upload sessions open.")

	for _, k := range cacheKinds {
		m.cacheHits.WithLabelValues(k)
		m.cacheMisses.WithLabelValues(k)
		m.upstreamBytes.WithLabelValues(k)
		for _, r := range results {
			m.upstream.WithLabelValues(k, r)
		}
	}
	for _, k := range maintenanceKinds {
		m.maintDuration.WithLabelValues(k)
		m.maintFreed.WithLabelValues(k)
		m.maintRemoved.WithLabelValues(k)
		for _, r := range results {
			m.maintRuns.WithLabelValues(k, r)
		}
	}
	for _, op := range txnOps {
		m.txnDuration.WithLabelValues(op)
		for _, r := range results {
			m.txns.WithLabelValues(op, r)
		}
	}
	return m
}

// register registers c with reg and returns it, or the collector
// registered before it with the same descriptors.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	panic(fmt.Sprintf("server: registering metrics: %v", err))
}

// Handler returns the handler of /metrics: the metrics of the registry
// given to NewMetrics (of its own registry if none was given; of
// prometheus.DefaultGatherer if the one given is not also a
// prometheus.Gatherer, as a *prometheus.Registry is), in the Prometheus
// text format or another one the scraper asks for.
func (m *Metrics) Handler() http.Handler {
	if m == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(m.gatherer, promhttp.HandlerOpts{})
}

// Wrap returns a handler that serves next and counts its requests by route
// (see the access log), method and status code, times them by route and
// method, counts the bytes of their bodies by route, and gauges the
// requests in flight. A request whose handler panics is counted, with the
// status it sent or else 500, before the panic goes on.
func (m *Metrics) Wrap(next http.Handler) http.Handler {
	if m == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.inFlight.Inc()
		o, r2 := observe(w, r)
		defer func() {
			p := recover()
			route, method := routeOf(r.Method, r.URL.Path), methodLabel(r.Method)
			code := strconv.Itoa(o.rw.statusFor(p != nil))
			m.requests.WithLabelValues(route, method, code).Inc()
			m.duration.WithLabelValues(route, method).Observe(time.Since(o.start).Seconds())
			m.responseBytes.WithLabelValues(route).Add(float64(o.rw.written))
			m.requestBytes.WithLabelValues(route).Add(float64(o.bytesRead()))
			m.inFlight.Dec()
			if p != nil {
				panic(p)
			}
		}()
		next.ServeHTTP(o.rw, r2)
	})
}

// methodLabel is the method label of a request: its method if the
// distribution spec or CORS uses it, else "other" (a client chooses the
// method: it must not grow the series without bound).
func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost,
		http.MethodPatch, http.MethodDelete, http.MethodOptions:
		return method
	}
	return "other"
}

// CacheHit counts a pull-through cache lookup of kind ("manifest" or
// "blob") answered from the store.
func (m *Metrics) CacheHit(kind string) {
	if m != nil {
		m.cacheHits.WithLabelValues(kind).Inc()
	}
}

// CacheMiss counts a pull-through cache lookup of kind ("manifest" or
// "blob") that had to go upstream.
func (m *Metrics) CacheMiss(kind string) {
	if m != nil {
		m.cacheMisses.WithLabelValues(kind).Inc()
	}
}

// UpstreamFetch counts a fetch of kind ("manifest" or "blob") from the
// upstream registry that returned err, and the bytes it fetched (even if
// it failed after some).
func (m *Metrics) UpstreamFetch(kind string, bytes int64, err error) {
	if m == nil {
		return
	}
	m.upstream.WithLabelValues(kind, resultOf(err)).Inc()
	if bytes > 0 {
		m.upstreamBytes.WithLabelValues(kind).Add(float64(bytes))
	}
}

// Maintenance records a maintenance run of kind ("prune" or "gc") that
// took d, freed freedBytes, removed removed items and returned err (a run
// that failed may have freed some).
func (m *Metrics) Maintenance(kind string, d time.Duration, freedBytes int64, removed int, err error) {
	if m == nil {
		return
	}
	m.maintRuns.WithLabelValues(kind, resultOf(err)).Inc()
	m.maintDuration.WithLabelValues(kind).Observe(d.Seconds())
	if freedBytes > 0 {
		m.maintFreed.WithLabelValues(kind).Add(float64(freedBytes))
	}
	if removed > 0 {
		m.maintRemoved.WithLabelValues(kind).Add(float64(removed))
	}
}

// LockWait records a wait of d for the store's writer lock.
func (m *Metrics) LockWait(d time.Duration) {
	if m != nil {
		m.lockWait.Observe(d.Seconds())
	}
}

// Txn records a store transaction of op (one of a small fixed set:
// "put_manifest", "delete", "tag", "prune", "gc", "upload_commit") that
// took d and returned err.
func (m *Metrics) Txn(op string, d time.Duration, err error) {
	if m == nil {
		return
	}
	m.txnDuration.WithLabelValues(op).Observe(d.Seconds())
	m.txns.WithLabelValues(op, resultOf(err)).Inc()
}

// Uploads sets the number of blob upload sessions open to n.
func (m *Metrics) Uploads(n int) {
	if m != nil {
		m.uploads.Set(float64(n))
	}
}
