package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ocistore/ocistore/server"
	"github.com/ocistore/ocistore/store"
)

// serveOpts are serve's flags.
type serveOpts struct {
	listen        string
	uploadTTL     time.Duration
	maxSize       int64
	keepLast      int
	pruneInterval time.Duration
	gcInterval    time.Duration
	gcGrace       time.Duration
	linger        time.Duration
	shutdown      time.Duration
	tlsCert       string
	tlsKey        string
	htpasswd      string
	accessLog     bool
	upstreams     []string // [PREFIX=]URL
	tagTTL        time.Duration
}

var serveCmd = &command{
	name:    "serve",
	summary: "serve the layout as an OCI registry (distribution spec v1.1)",
	help: `Serves the layout over the OCI distribution spec v1.1: pull, push (monolithic,
chunked and resumable uploads, cross-repository mounts), tags list, referrers
and deletes. A repository is a set of names of the layout: the tag T of the
repository R is the index.json entry "R:T" (what ocistore ls shows).

Every change is a journaled transaction of the store, as with the other
commands: a push acknowledged with 201 survives a crash or a power cut, and an
upload in progress is resumable after a restart (its session, a lease of the
journal, lives at least --upload-ttl after its last chunk, at most twice that).

Maintenance runs while pushes and pulls go on, never read-only: with
--max-size or --keep-last, a prune every --prune-interval removes the least
recently pulled images beyond the budget (--keep-last N keeps the newest N of
each repository); a GC every --gc-interval removes the blobs that nothing
references any more, and the staging files of abandoned uploads. A blob an
upload wrote stays until its session's lease ends, and the blobs of a pruned
image stay for --linger, so that a pull that read its manifest just before
the prune still gets every blob (the tag itself is gone: 404).

SIGINT or SIGTERM stops the server gracefully: it stops accepting, lets the
requests in flight finish (at most --shutdown-timeout), and leaves the
uploads in progress resumable.`,
	flagHelp: `      --listen ADDR              address to listen on (default 127.0.0.1:5000)
      --upload-ttl DURATION      life of an upload session without a write (default 1h)
      --max-size SIZE            prune the least recently pulled images beyond SIZE
      --keep-last N              keep the newest N images of each repository
      --prune-interval DURATION  how often to prune (default 1m, with --max-size or --keep-last)
      --gc-interval DURATION     how often to GC (default 10m; 0 never)
      --gc-grace DURATION        GC keeps unreferenced blobs this young (default 10m)
      --linger DURATION          a pruned image's blobs stay this long, for the pulls
                                 that read its manifest just before (default 10m)
      --shutdown-timeout DURATION  how long requests in flight may take at shutdown (default 30s)
      --tls-cert FILE            serve HTTPS with this certificate (with --tls-key)
      --tls-key FILE             the certificate's key
      --htpasswd FILE            require HTTP basic auth, users from FILE (bcrypt,
                                 as htpasswd -B writes it; reread on SIGHUP)
      --access-log BOOL          log each request on stderr (default true)
      --upstream [PREFIX=]URL    pull through the registry at URL (https://HOST[:PORT],
                                 or http:// for plain HTTP): a manifest or blob the
                                 layout does not hold is fetched, stored and served.
                                 With PREFIX, only the repositories PREFIX/NAME, as
                                 NAME upstream; without, every other one. Repeatable.
                                 Credentials come from the podman and Docker files,
                                 as for pull.
      --upstream-ca-file FILE    trust this CA (PEM) for the upstreams too
      --tag-ttl DURATION         serve a pulled tag this long before asking the
                                 upstream whether it moved (default 1m)

/healthz answers 200 "ok" without credentials (503 with the reason once a
durability failure, a failed fsync, makes the store refuse writes: restart); /metrics serves the Prometheus
metrics (requests, bytes, upload sessions, transactions, writer lock waits,
prune and GC runs and bytes freed), behind --htpasswd when it is given.`,
	maxArgs: 0,
	flags: func(fs *flag.FlagSet, a *app) {
		o := &a.serve
		o.listen = "127.0.0.1:5000"
		o.uploadTTL = store.DefaultUploadTTL
		o.pruneInterval = time.Minute
		o.gcInterval = 10 * time.Minute
		o.gcGrace = 10 * time.Minute
		o.linger = 10 * time.Minute
		o.shutdown = 30 * time.Second
		fs.StringVar(&o.listen, "listen", o.listen, "address to listen on")
		fs.Func("upload-ttl", "upload session life", atLeast(parseDuration, time.Second, "must be at least 1s", func(d time.Duration) { o.uploadTTL = d }))
		fs.Func("max-size", "size budget", atLeast(parseSize, 1, "want a positive size", func(n int64) { o.maxSize = n }))
		fs.Func("keep-last", "images kept per repository", count("want a whole number of at least 1", func(n int) { o.keepLast = n }))
		fs.Func("prune-interval", "prune period", atLeast(parseDuration, 10*time.Millisecond, "must be at least 10ms", func(d time.Duration) { o.pruneInterval = d }))
		fs.Func("gc-interval", "GC period", atLeast(parseDuration, 0, "must not be negative", func(d time.Duration) { o.gcInterval = d }))
		fs.Func("gc-grace", "GC grace", atLeast(parseDuration, 0, "must not be negative", func(d time.Duration) { o.gcGrace = d }))
		fs.Func("linger", "pruned blobs kept for pulls in flight", atLeast(parseDuration, 0, "must not be negative", func(d time.Duration) { o.linger = d }))
		fs.Func("shutdown-timeout", "graceful shutdown limit", atLeast(parseDuration, 0, "must not be negative", func(d time.Duration) { o.shutdown = d }))
		fs.StringVar(&o.tlsCert, "tls-cert", "", "TLS certificate")
		fs.StringVar(&o.tlsKey, "tls-key", "", "TLS key")
		fs.StringVar(&o.htpasswd, "htpasswd", "", "htpasswd file")
		o.accessLog = true
		o.tagTTL = time.Minute
		fs.Func("upstream", "registry to pull through", func(v string) error {
			if _, err := parseUpstream(v); err != nil {
				return err
			}
			o.upstreams = append(o.upstreams, v)
			return nil
		})
		fs.StringVar(&a.remote.caFile, "upstream-ca-file", "", "CA of the upstreams")
		fs.Func("tag-ttl", "tag freshness", atLeast(parseDuration, 0, "must not be negative", func(d time.Duration) { o.tagTTL = d }))
		fs.BoolVar(&o.accessLog, "access-log", o.accessLog, "log each request")
	},
	run: runServe,
}

func runServe(ctx context.Context, a *app, _ []string) error {
	o := a.serve
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return usagef("--tls-cert and --tls-key go together")
	}
	var auth *server.Htpasswd
	if o.htpasswd != "" {
		var err error
		if auth, err = server.LoadHtpasswd(o.htpasswd); err != nil {
			return err
		}
	}
	var ups []server.Upstream
	if len(o.upstreams) > 0 {
		client, err := a.registryClient()
		if err != nil {
			return err
		}
		for _, v := range o.upstreams {
			u, _ := parseUpstream(v)
			u.Client, u.TagTTL = client, o.tagTTL
			if u.TagTTL == 0 {
				u.TagTTL = time.Nanosecond // always ask
			}
			ups = append(ups, u)
		}
	}
	m := server.NewMetrics(nil)
	so := a.storeOptions(false)
	so.OnWriterLock = func(wait, _ time.Duration) { m.LockWait(wait) }
	return a.withStoreOpts(ctx, so, func(st *store.Store) error {
		srv := server.New(st, &server.Options{Logger: a.log, UploadTTL: o.uploadTTL, Metrics: m, Upstreams: ups})
		defer srv.Close()
		mux := http.NewServeMux()
		mux.Handle("/v2/", srv)
		mux.Handle("/metrics", m.Handler())
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			if err := st.Err(); err != nil {
				// A durability failure: reads go on, writes are refused
				// until the server is restarted (the store reopened).
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "writes refused: %v\n", err)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		var h http.Handler = mux
		if auth != nil {
			h = auth.Wrap(h)
			stop := reloadOnHangup(a.log, auth)
			defer stop()
		}
		if o.accessLog {
			h = server.AccessLog(newLogger(a.stderr, slog.LevelInfo, a.logFormat, isTerminal(a.stderr) && a.getenv("NO_COLOR") == ""), h)
		}
		h = m.Wrap(h)
		ln, err := net.Listen("tcp", o.listen)
		if err != nil {
			return err
		}
		hs := &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 30 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
		}
		scheme := "http"
		if o.tlsCert != "" {
			scheme = "https"
		}
		fmt.Fprintf(a.stderr, "ocistore: serving %s on %s://%s\n", a.layout, scheme, ln.Addr())
		mctx, stopMaint := context.WithCancel(context.WithoutCancel(ctx))
		maintDone := make(chan struct{})
		go func() {
			defer close(maintDone)
			maintain(mctx, a.log, st, m, o)
		}()
		served := make(chan error, 1)
		go func() {
			if o.tlsCert != "" {
				served <- hs.ServeTLS(ln, o.tlsCert, o.tlsKey)
			} else {
				served <- hs.Serve(ln)
			}
		}()
		select {
		case err = <-served:
		case <-ctx.Done():
			a.log.Info("shutting down: letting the requests in flight finish", "timeout", o.shutdown)
			sctx, cancel := context.WithTimeout(context.Background(), o.shutdown)
			err = hs.Shutdown(sctx)
			cancel()
			if err != nil {
				hs.Close()
			}
			<-served
		}
		stopMaint()
		<-maintDone
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		if err == nil && ctx.Err() != nil {
			fmt.Fprintf(a.stderr, "ocistore: stopped; uploads in progress stay resumable\n")
		}
		return err
	})
}

// parseUpstream reads --upstream [PREFIX=]URL.
func parseUpstream(v string) (server.Upstream, error) {
	var u server.Upstream
	prefix, rawURL, ok := strings.Cut(v, "=")
	if !ok {
		prefix, rawURL = "", v
	}
	if prefix != "" && !server.ValidRepository(prefix) {
		return u, fmt.Errorf("prefix %q is not a repository name", prefix)
	}
	pu, err := url.Parse(rawURL)
	if err != nil || pu.Host == "" || (pu.Path != "" && pu.Path != "/") || pu.RawQuery != "" {
		return u, fmt.Errorf("%q: want https://HOST[:PORT] or http://HOST[:PORT]", rawURL)
	}
	switch pu.Scheme {
	case "https":
	case "http":
		u.PlainHTTP = true
	default:
		return u, fmt.Errorf("%q: want https://HOST[:PORT] or http://HOST[:PORT]", rawURL)
	}
	u.Prefix, u.Registry = prefix, pu.Host
	return u, nil
}

// reloadOnHangup rereads the htpasswd file at each SIGHUP until stop.
func reloadOnHangup(log *slog.Logger, auth *server.Htpasswd) (stop func()) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-c:
				if err := auth.Reload(); err != nil {
					log.Error("htpasswd not reloaded; the previous users stay", "err", err)
				} else {
					log.Info("htpasswd reloaded")
				}
			}
		}
	}()
	return func() {
		signal.Stop(c)
		close(done)
	}
}

// pruneBatch is how many images one prune transaction of the server
// removes at most (store.Policy.Limit).
const pruneBatch = 100

// maintain runs prune and GC on their intervals until ctx ends.
func maintain(ctx context.Context, log *slog.Logger, st *store.Store, m *server.Metrics, o serveOpts) {
	var pruneC, gcC <-chan time.Time
	if o.maxSize > 0 || o.keepLast > 0 {
		t := time.NewTicker(o.pruneInterval)
		defer t.Stop()
		pruneC = t.C
	}
	if o.gcInterval > 0 {
		t := time.NewTicker(o.gcInterval)
		defer t.Stop()
		gcC = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-pruneC:
			// In batches: a push waits for the writer lock one batch at
			// most, not a whole prune of thousands of images.
			for ctx.Err() == nil {
				start := time.Now()
				res, err := st.Prune(ctx, store.Policy{MaxSize: o.maxSize, KeepLast: o.keepLast, Linger: o.linger, Limit: pruneBatch})
				if res != nil {
					m.Maintenance("prune", time.Since(start), res.BytesFreed, len(res.Removed), err)
				} else {
					m.Maintenance("prune", time.Since(start), 0, 0, err)
				}
				if err != nil {
					if ctx.Err() == nil {
						log.Error("prune failed", "err", err)
					}
					break
				}
				if len(res.Removed) > 0 {
					log.Info("prune", "removed", len(res.Removed), "bytes_freed", res.BytesFreed, "lingering", len(res.Lingering), "more", res.More)
				}
				if !res.More {
					break
				}
			}
		case <-gcC:
			start := time.Now()
			res, err := st.GC(ctx, store.GCOptions{Grace: o.gcGrace})
			if res != nil {
				m.Maintenance("gc", time.Since(start), res.BytesFreed+res.UploadBytes, len(res.Freed)+res.Uploads, err)
			} else {
				m.Maintenance("gc", time.Since(start), 0, 0, err)
			}
			if err != nil {
				if ctx.Err() == nil {
					log.Error("gc failed", "err", err)
				}
				continue
			}
			if len(res.Freed) > 0 || res.Uploads > 0 {
				log.Info("gc", "freed", len(res.Freed), "bytes_freed", res.BytesFreed, "uploads", res.Uploads)
			}
		}
	}
}
