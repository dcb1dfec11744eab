package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/errcode"
	"oras.land/oras-go/v2/registry/remote/retry"

	"github.com/ocistore/ocistore/store"
	"github.com/ocistore/ocistore/store/orasstore"
)

// pull, push and copy move images between the layout and registries with
// oras-go (registry/remote): the layout side of every copy is an
// orasstore.Target, which writes under one lease; the tag is set last, in
// one transaction, once the whole graph is in the layout.

// EnvLeaseTTL names the environment variable that sets the life of the
// lease a pull or copy into a layout writes under (a Go duration; default
// orasstore.DefaultLeaseTTL, an hour). It is for tests, which make the
// lease of a killed pull expire in seconds.
const EnvLeaseTTL = "OCISTORE_LEASE_TTL"

// defaultConcurrency is --concurrency when not given: oras-go's default.
const defaultConcurrency = 3

// remoteOpts are the flags of pull, push and copy.
type remoteOpts struct {
	platform      *v1.Platform
	username      string
	passwordStdin bool
	plainHTTP     bool
	insecure      bool
	caFile        string
	concurrency   int
	referrers     bool
}

func remoteFlags(fs *flag.FlagSet, a *app) {
	a.remote.concurrency = defaultConcurrency
	fs.Func("platform", "os/arch[/variant] of a multi-platform index", func(s string) error {
		p, err := parsePlatform(s)
		if err != nil {
			return err
		}
		a.remote.platform = p
		return nil
	})
	fs.BoolVar(&a.remote.referrers, "referrers", false, "copy the referrers (signatures, SBOMs) too")
	fs.Func("concurrency", "blobs transferred at once (default 3)", count("want a number of at least 1", func(n int) { a.remote.concurrency = n }))
	fs.StringVar(&a.remote.username, "username", "", "the registry user (with --password-stdin)")
	fs.BoolVar(&a.remote.passwordStdin, "password-stdin", false, "read the password from stdin")
	fs.BoolVar(&a.remote.plainHTTP, "plain-http", false, "speak HTTP, not HTTPS, to the registry")
	fs.BoolVar(&a.remote.insecure, "insecure", false, "do not verify the registry's TLS certificate")
	fs.StringVar(&a.remote.caFile, "ca-file", "", "PEM file of CA certificates to trust")
}

const remoteFlagHelp = `      --platform OS/ARCH[/VARIANT]
                        of a multi-platform index, copy only the manifest of
                        that platform (linux/amd64, linux/arm64/v8), which
                        becomes the image; by default the index is copied whole
      --referrers       copy the referrers too (signatures, SBOMs: manifests
                        whose subject is the image), through the registry's
                        referrers API or, where it has none, the tag schema
                        (sha256-<hex>) that oras and cosign use
      --concurrency N   blobs transferred at once (default 3)
      --username USER   the registry's user, with --password-stdin; without
                        them, credentials come from the podman and Docker
                        config files (see above)
      --password-stdin  read the password from stdin (one line)
      --plain-http      speak HTTP, not HTTPS, to the registry
      --insecure        do not verify the registry's TLS certificate
      --ca-file FILE    trust the CA certificates of FILE (PEM), besides the
                        system's
`

// remoteHelp is the part of the help that pull, push and copy share.
const remoteHelp = `A registry reference is REGISTRY/REPO:TAG or REGISTRY/REPO@DIGEST, the
registry named by its host (127.0.0.1:5000, registry.example.com). Requests
that fail for a passing reason (a reset connection, 429, 5xx) are retried,
with exponential back-off, up to 5 times.

Credentials: --username and --password-stdin, for every registry of the
command; else the first file that has some for the registry among
$REGISTRY_AUTH_FILE (or ${XDG_RUNTIME_DIR}/containers/auth.json),
$XDG_CONFIG_HOME/containers/auth.json (~/.config/containers/auth.json) and
Docker's config.json ($DOCKER_CONFIG, or ~/.docker), with the credential
helpers it names; else none.

On a terminal, a progress line (blobs done out of those seen so far) is
drawn on stderr.`

// transferJSON is the help's description of the JSON output of pull, push
// and copy.
const transferJSON = `JSON output (docs/JSON.md): {source, destination, digest, mediaType, size,
blobs: {copied, skipped}, bytes, referrers: [{digest, mediaType,
artifactType, size}]}: source and destination as copy names them (oci:DIR:REF
for a layout, REF a tag or, for an image left untagged, its digest); digest,
mediaType, size the image's manifest or index; blobs copied, and skipped
because the destination had them (a manifest it had counts with its whole
graph); bytes the bytes copied; referrers those copied with --referrers.`

var pullCmd = &command{
	name:    "pull",
	args:    "REMOTE-REF [LOCAL-TAG]",
	summary: "copy an image from a registry into the layout",
	help: `Copies the image REMOTE-REF names (REGISTRY/REPO:TAG or REGISTRY/REPO@DIGEST)
from its registry into the layout and tags it LOCAL-TAG: by default
REMOTE-REF as it is written (127.0.0.1:5000/app:v1); an image pulled by
digest without LOCAL-TAG is kept as an untagged entry of index.json.

Blobs the layout has are not fetched again. The others are written, each
verified against its digest and size and synced, under a lease of the
store, so that a gc or prune running meanwhile does not take them; the tag
is set last, in one transaction, once the whole image is in the layout.
A pull that fails or is interrupted (Ctrl-C, a crash, kill -9) therefore
leaves index.json as it was: no new tag, no new entry. Run again, it reuses
the blobs written; those of a pull never finished are freed by gc once its
lease has ended (at once after an error or Ctrl-C; an hour after a crash).

` + remoteHelp + `

` + transferJSON + `

Exit status 2 when REMOTE-REF is not in the registry (or has no manifest
for --platform).`,
	minArgs:  1,
	maxArgs:  2,
	format:   true,
	flags:    remoteFlags,
	flagHelp: remoteFlagHelp,
	run:      runPull,
}

var pushCmd = &command{
	name:    "push",
	args:    "LOCAL-REF REMOTE-REF",
	summary: "copy an image of the layout to a registry",
	help: `Copies the image LOCAL-REF names (a tag or a digest of the layout) to the
registry as REMOTE-REF (REGISTRY/REPO:TAG, or REGISTRY/REPO@DIGEST to push
without a tag). Blobs the registry has are not sent again; the tag is set
last, once the whole image is there. The layout is only read: push takes
no lock.

` + remoteHelp + `

` + transferJSON + `

Exit status 2 when LOCAL-REF is not in the layout.`,
	minArgs:  2,
	maxArgs:  2,
	format:   true,
	flags:    remoteFlags,
	flagHelp: remoteFlagHelp,
	run:      runPush,
}

var copyCmd = &command{
	name:    "copy",
	args:    "SRC DST",
	summary: "copy an image between registries and layouts",
	help: `Copies the image SRC names to DST. Each is a registry reference
(REGISTRY/REPO:TAG or REGISTRY/REPO@DIGEST) or oci:DIR:REF, an OCI image
layout that ocistore manages (DIR must exist: ocistore init creates one)
and a tag or digest in it; --layout is not used. DST's REF may be left out
(oci:DIR): the image is tagged as SRC's tag or reference, or kept untagged
when SRC names it by digest. A registry DST needs a tag, or SRC's digest.

Into a layout, copy behaves as pull does (a lease, the tag last, nothing
left in index.json by a copy that fails or is interrupted); out of one, as
push does (the layout is only read).

` + remoteHelp + `

` + transferJSON + `

Exit status 2 when SRC is not found.`,
	minArgs:  2,
	maxArgs:  2,
	format:   true,
	layout:   layoutNone,
	flags:    remoteFlags,
	flagHelp: remoteFlagHelp,
	run:      runCopy,
}

// endpoint is one side of a copy: a repository of a registry, or an
// ocistore layout.
type endpoint struct {
	ref registry.Reference // a registry side; its Reference is the tag or digest ("" for none)
	dir string             // a layout side: its directory ("" for a registry side)
	tag string             // a layout side: the tag or digest ("" for none)
}

// layoutPrefix starts a copy argument that names a layout.
const layoutPrefix = "oci:"

func (e endpoint) isLayout() bool { return e.dir != "" }

// reference is the tag or digest the endpoint names, "" for none.
func (e endpoint) reference() string {
	if e.isLayout() {
		return e.tag
	}
	return e.ref.Reference
}

// String names the endpoint as copy's arguments do.
func (e endpoint) String() string {
	if !e.isLayout() {
		return e.ref.String()
	}
	if e.tag == "" {
		return layoutPrefix + e.dir
	}
	return layoutPrefix + e.dir + ":" + e.tag
}

// isDigest reports whether ref is a digest (sha256:...).
func isDigest(ref string) bool {
	_, err := digest.Parse(ref)
	return err == nil
}

// parseRemote reads a registry reference: REGISTRY/REPO[:TAG|@DIGEST].
func parseRemote(s string) (endpoint, error) {
	if strings.HasPrefix(s, layoutPrefix) {
		return endpoint{}, usagef("%s: want a registry reference (REGISTRY/REPO:TAG or REGISTRY/REPO@DIGEST), not a layout", s)
	}
	ref, err := registry.ParseReference(s)
	if err != nil {
		return endpoint{}, usagef("%s: not a registry reference (REGISTRY/REPO:TAG or REGISTRY/REPO@DIGEST): %v", s, trimOrasErr(err))
	}
	return endpoint{ref: ref}, nil
}

// parseEndpoint reads one side of copy: oci:DIR[:REF] or a registry
// reference.
func parseEndpoint(s string) (endpoint, error) {
	rest, ok := strings.CutPrefix(s, layoutPrefix)
	if !ok {
		return parseRemote(s)
	}
	dir, tag, _ := strings.Cut(rest, ":")
	if dir == "" {
		return endpoint{}, usagef("%s: no directory (want oci:DIR:REF)", s)
	}
	if err := checkRef(tag); tag != "" && err != nil {
		return endpoint{}, err
	}
	return endpoint{dir: dir, tag: tag}, nil
}

// trimOrasErr drops oras-go's "invalid reference: " prefix, which the
// message says already.
func trimOrasErr(err error) string {
	msg := err.Error()
	if _, after, ok := strings.Cut(msg, ": "); ok && strings.HasPrefix(msg, errdef.ErrInvalidReference.Error()) {
		return after
	}
	return msg
}

func parsePlatform(s string) (*v1.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || slices.Contains(parts, "") {
		return nil, errors.New("want os/arch or os/arch/variant")
	}
	p := &v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

func runPull(ctx context.Context, a *app, args []string) error {
	src, err := parseRemote(args[0])
	if err != nil {
		return err
	}
	dst := endpoint{dir: a.layout}
	switch {
	case len(args) == 2:
		if err := checkLocalTag(args[1]); err != nil {
			return err
		}
		dst.tag = args[1]
	case !isDigest(src.ref.Reference):
		dst.tag = args[0]
	}
	return a.transfer(ctx, "pull", src, dst)
}

func runPush(ctx context.Context, a *app, args []string) error {
	if err := checkRef(args[0]); err != nil {
		return err
	}
	dst, err := parseRemote(args[1])
	if err != nil {
		return err
	}
	return a.transfer(ctx, "push", endpoint{dir: a.layout, tag: args[0]}, dst)
}

func runCopy(ctx context.Context, a *app, args []string) error {
	src, err := parseEndpoint(args[0])
	if err != nil {
		return err
	}
	dst, err := parseEndpoint(args[1])
	if err != nil {
		return err
	}
	if src.reference() == "" {
		return usagef("%s: name the image (oci:DIR:REF, REGISTRY/REPO:TAG or REGISTRY/REPO@DIGEST)", args[0])
	}
	if dst.isLayout() && dst.tag != "" {
		if err := checkLocalTag(dst.tag); err != nil {
			return err
		}
	}
	if dst.isLayout() && dst.tag == "" && !isDigest(src.reference()) {
		if src.isLayout() {
			dst.tag = src.tag
		} else {
			dst.tag = src.ref.String()
		}
	}
	for _, e := range []endpoint{src, dst} {
		if e.isLayout() {
			if err := probeLayout(e.dir, false); err != nil {
				return err
			}
		}
	}
	return a.transfer(ctx, "copy", src, dst)
}

// checkLocalTag refuses a digest where a tag of the layout is wanted.
func checkLocalTag(tag string) error {
	if err := checkRef(tag); err != nil {
		return err
	}
	if isDigest(tag) {
		return usagef("%s: want a tag for the layout, not a digest", tag)
	}
	return nil
}

// leaseTTL is the life of the lease of a copy into a layout: $OCISTORE_LEASE_TTL
// when set (tests), else orasstore's default.
func (a *app) leaseTTL() (time.Duration, error) {
	s := a.getenv(EnvLeaseTTL)
	if s == "" {
		return orasstore.DefaultLeaseTTL, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, usagef("$%s=%q: want a positive duration", EnvLeaseTTL, s)
	}
	return d, nil
}

// transfer copies the image src names to dst, opening what each side
// needs, and prints the outcome; cmd is the command (pull, push, copy).
func (a *app) transfer(ctx context.Context, cmd string, src, dst endpoint) (err error) {
	x := &transferRun{a: a, cmd: cmd, src: src, dst: dst}
	if dst.isLayout() {
		if x.ttl, err = a.leaseTTL(); err != nil {
			return err
		}
	}
	if !src.isLayout() || !dst.isLayout() {
		if x.client, err = a.registryClient(); err != nil {
			return err
		}
	}
	if src.isLayout() {
		o := a.storeOptions(false)
		o.ReadOnly = true
		s, err := store.Open(ctx, src.dir, o)
		if err != nil {
			return err
		}
		defer s.Close()
		x.srcStore = s
	}
	if dst.isLayout() {
		s, err := store.Open(ctx, dst.dir, a.storeOptions(false))
		if err != nil {
			return err
		}
		defer func() {
			if cerr := s.Close(); err == nil {
				err = cerr
			}
		}()
		x.dstStore = s
	}
	res, err := x.run(ctx)
	if err != nil {
		return err
	}
	return a.printTransfer(res)
}

// registryClient is the HTTP client of every registry request: TLS as the
// flags say, retries with back-off, credentials.
func (a *app) registryClient() (*auth.Client, error) {
	o := a.remote
	if o.username != "" && !o.passwordStdin {
		return nil, usagef("--username needs --password-stdin (the password, read from stdin)")
	}
	if o.passwordStdin && o.username == "" {
		return nil, usagef("--password-stdin needs --username")
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.insecure}
	if o.caFile != "" {
		pem, err := os.ReadFile(o.caFile)
		if err != nil {
			return nil, usagef("--ca-file: %v", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usagef("--ca-file %s: no PEM certificate in it", o.caFile)
		}
		tlsConf.RootCAs = pool
	}
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.TLSClientConfig = tlsConf
	c := &auth.Client{
		Client: &http.Client{Transport: retry.NewTransport(base)},
		Cache:  auth.NewCache(),
	}
	c.SetUserAgent("ocistore/" + currentVersion().Version)
	if o.username != "" {
		b, err := io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
		if err != nil {
			return nil, fmt.Errorf("--password-stdin: %w", err)
		}
		pass := strings.TrimRight(string(b), "\r\n")
		if pass == "" {
			return nil, usagef("--password-stdin: no password on stdin")
		}
		cred := auth.Credential{Username: o.username, Password: pass}
		c.Credential = func(context.Context, string) (auth.Credential, error) { return cred, nil }
		return c, nil
	}
	st, err := a.credentialStore()
	if err != nil {
		return nil, err
	}
	c.Credential = credentials.Credential(st)
	return c, nil
}

// credentialStore reads the credentials of the podman and Docker config
// files, in the order podman reads them (containers-auth.json(5)).
func (a *app) credentialStore() (credentials.Store, error) {
	var files []string
	if f := a.getenv("REGISTRY_AUTH_FILE"); f != "" {
		files = append(files, f)
	} else if d := a.getenv("XDG_RUNTIME_DIR"); d != "" {
		files = append(files, filepath.Join(d, "containers", "auth.json"))
	}
	if d := a.getenv("XDG_CONFIG_HOME"); d != "" {
		files = append(files, filepath.Join(d, "containers", "auth.json"))
	} else if h := a.getenv("HOME"); h != "" {
		files = append(files, filepath.Join(h, ".config", "containers", "auth.json"))
	}
	var stores []credentials.Store
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			continue
		}
		st, err := credentials.NewStore(f, credentials.StoreOptions{})
		if err != nil {
			return nil, fmt.Errorf("credentials: %s: %w", f, err)
		}
		stores = append(stores, st)
	}
	docker, err := credentials.NewStoreFromDocker(credentials.StoreOptions{})
	if err != nil {
		return nil, fmt.Errorf("credentials: Docker's config.json: %w", err)
	}
	stores = append(stores, docker)
	return credentials.NewStoreWithFallbacks(stores[0], stores[1:]...), nil
}

// transferRun is one copy.
type transferRun struct {
	a                  *app
	cmd                string // pull, push or copy
	src, dst           endpoint
	ttl                time.Duration
	client             *auth.Client
	srcStore, dstStore *store.Store // the layouts, for the sides that are one

	mu        sync.Mutex
	copied    map[digest.Digest]bool
	skippedAt []v1.Descriptor // the roots of the sub-graphs the destination had
	seen      map[digest.Digest]bool
	bytes     int64
	referrers map[digest.Digest]v1.Descriptor
	progress  *progress
	into      *orasstore.Target // the destination when it is a layout
}

// transferResult is what a copy did.
type transferResult struct {
	cmd       string
	src, dst  string
	root      v1.Descriptor
	copied    int
	skipped   int
	bytes     int64
	referrers []v1.Descriptor
}

func (x *transferRun) repository(e endpoint) *remote.Repository {
	return &remote.Repository{Client: x.client, Reference: e.ref, PlainHTTP: x.a.remote.plainHTTP}
}

func (x *transferRun) run(ctx context.Context) (*transferResult, error) {
	x.copied = map[digest.Digest]bool{}
	x.seen = map[digest.Digest]bool{}
	x.referrers = map[digest.Digest]v1.Descriptor{}

	var srcT oras.ReadOnlyGraphTarget
	if x.src.isLayout() {
		srcT = orasstore.New(x.srcStore, nil) // reads only: no lease, nothing to close
	} else {
		srcT = x.repository(x.src)
	}
	src := &namedSource{ReadOnlyGraphTarget: srcT, name: x.sourceName()}

	root, err := oras.Resolve(ctx, srcT, x.src.reference(), oras.ResolveOptions{TargetPlatform: x.a.remote.platform})
	if err != nil {
		return nil, x.resolveError(err)
	}
	if !x.dst.isLayout() && isDigest(x.dst.ref.Reference) && x.dst.ref.Reference != root.Digest.String() {
		return nil, fmt.Errorf("%s: the image of %s is %s: a registry destination names a tag, or the image's digest", x.dst.ref, x.src, root.Digest)
	}

	var dst oras.Target
	var into *orasstore.Target
	if x.dst.isLayout() {
		into = orasstore.New(x.dstStore, &orasstore.Options{LeaseTTL: x.ttl})
		x.into = into
		dst = &namedDest{Target: into, name: "the layout " + x.dst.dir, from: src.name}
	} else {
		repo := x.repository(x.dst)
		dst = &namedDest{Target: repo, name: x.dst.ref.Registry + "/" + x.dst.ref.Repository, from: src.name}
	}

	x.seen[root.Digest] = true
	x.progress = startProgress(x.a.stderr, isTerminal(x.a.stderr), x.verb()+" "+x.src.String())
	err = x.copyGraph(ctx, src, dst, root)
	if err == nil {
		err = x.finish(ctx, dst, into, root)
	}
	x.progress.Stop()
	if err != nil {
		if into != nil {
			// Nothing is kept: the lease is released, so that gc frees
			// what the copy wrote.
			_ = into.Abort(context.WithoutCancel(ctx))
		}
		return nil, err
	}
	if into != nil {
		if err := into.Close(ctx); err != nil {
			return nil, err
		}
	}
	return x.result(ctx, root)
}

// verb is the command's verb, "pull" as "pulling".
func (x *transferRun) verb() string {
	if x.cmd == "copy" {
		return "copying"
	}
	return x.cmd + "ing"
}

// sourceName names the source in messages: the repository, or the layout.
func (x *transferRun) sourceName() string {
	if x.src.isLayout() {
		return "the layout " + x.src.dir
	}
	return x.src.ref.Registry + "/" + x.src.ref.Repository
}

// copyGraph copies root's graph (and, with --referrers, its referrers'),
// counting what it copies and skips.
func (x *transferRun) copyGraph(ctx context.Context, src *namedSource, dst oras.Target, root v1.Descriptor) error {
	opts := oras.CopyGraphOptions{
		Concurrency: x.a.remote.concurrency,
		PostCopy: func(_ context.Context, d v1.Descriptor) error {
			x.mu.Lock()
			defer x.mu.Unlock()
			x.copied[d.Digest] = true
			x.bytes += d.Size
			x.drawLocked()
			return nil
		},
		OnCopySkipped: func(_ context.Context, d v1.Descriptor) error {
			x.mu.Lock()
			defer x.mu.Unlock()
			x.skippedAt = append(x.skippedAt, d)
			x.drawLocked()
			return nil
		},
		FindSuccessors: func(ctx context.Context, f content.Fetcher, d v1.Descriptor) ([]v1.Descriptor, error) {
			find := content.Successors
			if x.into != nil {
				// Into a layout: a manifest's successors join the lease
				// with it in one commit before they are pushed, instead of
				// one commit per blob.
				find = x.into.FindSuccessors
			}
			succ, err := find(ctx, f, d)
			if err != nil {
				return nil, err
			}
			x.mu.Lock()
			for _, s := range succ {
				x.seen[s.Digest] = true
			}
			x.drawLocked()
			x.mu.Unlock()
			return succ, nil
		},
	}
	if !x.a.remote.referrers {
		return x.copyError(oras.CopyGraph(ctx, src, dst, root, opts))
	}
	eopts := oras.ExtendedCopyGraphOptions{
		CopyGraphOptions: opts,
		FindPredecessors: func(ctx context.Context, s content.ReadOnlyGraphStorage, d v1.Descriptor) ([]v1.Descriptor, error) {
			preds, err := s.Predecessors(ctx, d)
			if err != nil {
				return nil, fmt.Errorf("referrers of %s: %w", d.Digest, err)
			}
			x.mu.Lock()
			for _, p := range preds {
				if store.IsManifest(p.MediaType) {
					x.referrers[p.Digest] = p
					x.seen[p.Digest] = true
				}
			}
			x.mu.Unlock()
			return preds, nil
		},
	}
	return x.copyError(oras.ExtendedCopyGraph(ctx, src, dst, root, eopts))
}

func (x *transferRun) drawLocked() {
	x.progress.Set(int64(len(x.copied)+len(x.skippedAt)), int64(len(x.seen)))
}

// finish names the image at the destination, last: the tag, or for a
// layout an untagged entry; and keeps the referrers copied into a layout
// as untagged entries (one transaction).
func (x *transferRun) finish(ctx context.Context, dst oras.Target, into *orasstore.Target, root v1.Descriptor) error {
	if into == nil {
		ref := x.dst.ref.Reference
		if ref == "" || isDigest(ref) {
			return nil // pushed by digest
		}
		if err := dst.Tag(ctx, root, ref); err != nil {
			return fmt.Errorf("tag %s: %w", x.dst.ref, trimCopyError(err))
		}
		return nil
	}
	var err error
	if x.dst.tag != "" {
		err = x.dstStore.Tag(ctx, root, x.dst.tag)
	} else {
		err = x.dstStore.AddUntagged(ctx, root)
	}
	if err != nil {
		return err
	}
	// The referrers, those copied now and those the layout had (an
	// earlier pull that died before keeping them).
	return x.dstStore.AddUntagged(ctx, x.sortedReferrers()...)
}

func (x *transferRun) sortedReferrers() []v1.Descriptor {
	out := make([]v1.Descriptor, 0, len(x.referrers))
	for _, r := range x.referrers {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b v1.Descriptor) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	return out
}

// result counts what the copy did. With a layout on either side, the
// blobs skipped are those of the image's graph (and its referrers') that
// were not copied, walked in the layout; between two registries, the roots
// of the sub-graphs the destination had, each counted once.
func (x *transferRun) result(ctx context.Context, root v1.Descriptor) (*transferResult, error) {
	skipped := map[digest.Digest]bool{}
	walkIn := x.dstStore
	if walkIn == nil {
		walkIn = x.srcStore
	}
	if walkIn == nil {
		for _, d := range x.skippedAt {
			skipped[d.Digest] = true
		}
	} else {
		for _, d := range append([]v1.Descriptor{root}, x.sortedReferrers()...) {
			err := walkIn.Walk(ctx, d, func(n store.GraphNode) error {
				skipped[n.Descriptor.Digest] = true
				return nil
			})
			if err != nil {
				return nil, err
			}
		}
	}
	for d := range x.copied {
		delete(skipped, d)
	}
	res := &transferResult{
		cmd: x.cmd, src: x.src.String(), dst: x.dst.String(), root: root,
		copied: len(x.copied), skipped: len(skipped), bytes: x.bytes,
		referrers: x.sortedReferrers(),
	}
	if x.dst.isLayout() && x.dst.tag == "" {
		res.dst = layoutPrefix + x.dst.dir + ":" + root.Digest.String()
	}
	return res, nil
}

// Output ----------------------------------------------------------------------

var pastTense = map[string]string{"pull": "pulled", "push": "pushed", "copy": "copied"}

type transferOutput struct {
	Source      string         `json:"source"`
	Destination string         `json:"destination"`
	Digest      digest.Digest  `json:"digest"`
	MediaType   string         `json:"mediaType"`
	Size        int64          `json:"size"`
	Blobs       blobCounts     `json:"blobs"`
	Bytes       int64          `json:"bytes"`
	Referrers   []referrerJSON `json:"referrers"`
}

type blobCounts struct {
	Copied  int `json:"copied"`
	Skipped int `json:"skipped"`
}

type referrerJSON struct {
	Digest       digest.Digest `json:"digest"`
	MediaType    string        `json:"mediaType"`
	ArtifactType *string       `json:"artifactType"`
	Size         int64         `json:"size"`
}

func (a *app) printTransfer(r *transferResult) error {
	if a.json() {
		out := transferOutput{
			Source: r.src, Destination: r.dst, Digest: r.root.Digest, MediaType: r.root.MediaType, Size: r.root.Size,
			Blobs: blobCounts{Copied: r.copied, Skipped: r.skipped}, Bytes: r.bytes, Referrers: []referrerJSON{},
		}
		for _, d := range r.referrers {
			rj := referrerJSON{Digest: d.Digest, MediaType: d.MediaType, Size: d.Size}
			if d.ArtifactType != "" {
				rj.ArtifactType = &d.ArtifactType
			}
			out.Referrers = append(out.Referrers, rj)
		}
		return a.printJSON(out)
	}
	fmt.Fprintf(a.stdout, "%s %s to %s\n", pastTense[r.cmd], r.src, r.dst)
	fmt.Fprintf(a.stdout, "  %s %s, %s\n", r.root.Digest, r.root.MediaType, sizeWithBytes(r.root.Size))
	for _, d := range r.referrers {
		what := d.ArtifactType
		if what == "" {
			what = d.MediaType
		}
		fmt.Fprintf(a.stdout, "  referrer %s %s\n", d.Digest, what)
	}
	_, err := fmt.Fprintf(a.stdout, "  %s copied (%s), %s already there\n",
		plural(r.copied, "blob", "blobs"), humanSize(r.bytes), plural(r.skipped, "blob", "blobs"))
	return err
}

// Errors ----------------------------------------------------------------------

// namedSource is the source of a copy whose errors name the blob: a fetch
// that fails, and a read that fails part way (a connection cut, a
// truncated body), say which blob, from where, and after how many bytes.
type namedSource struct {
	oras.ReadOnlyGraphTarget
	name string
}

func (s *namedSource) Fetch(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error) {
	rc, err := s.ReadOnlyGraphTarget.Fetch(ctx, d)
	if err != nil {
		return nil, &blobError{desc: d, from: s.name, err: err}
	}
	r := &blobReader{rc: rc, desc: d, from: s.name}
	if d.Digest.Algorithm().Available() {
		r.digester = d.Digest.Algorithm().Digester()
	}
	return r, nil
}

// blobReader reads a blob from the source, counting and hashing what it
// reads, so that an error says how far it got and what came.
type blobReader struct {
	rc       io.ReadCloser
	desc     v1.Descriptor
	from     string
	n        int64
	digester digest.Digester // nil for an algorithm not linked in
	eof      bool
}

func (r *blobReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.n += int64(n)
	if r.digester != nil {
		r.digester.Hash().Write(p[:n])
	}
	switch {
	case err == io.EOF:
		r.eof = true
	case err != nil:
		var be *blobError
		if !errors.As(err, &be) {
			err = &blobError{desc: r.desc, from: r.from, what: fmt.Sprintf("the response was cut after %d of %d bytes", r.n, r.desc.Size), err: err}
		}
	}
	return n, err
}

func (r *blobReader) Close() error { return r.rc.Close() }

// received says what came, once the whole body was read: "N bytes hashing
// to DIGEST".
func (r *blobReader) received() string {
	if !r.eof || r.digester == nil {
		return ""
	}
	return fmt.Sprintf("%d bytes hashing to %s", r.n, r.digester.Digest())
}

// namedDest is the destination of a copy whose push errors name the blob.
type namedDest struct {
	oras.Target
	name string
	from string // the source, named
}

func (d *namedDest) Push(ctx context.Context, desc v1.Descriptor, r io.Reader) error {
	err := d.Target.Push(ctx, desc, r)
	var be *blobError
	if err == nil || errors.Is(err, errdef.ErrAlreadyExists) || errors.As(err, &be) || ctx.Err() != nil {
		return err
	}
	if errors.Is(err, store.ErrDigestMismatch) || errors.Is(err, store.ErrSizeMismatch) ||
		errors.Is(err, content.ErrMismatchedDigest) || errors.Is(err, content.ErrTrailingData) {
		what := "what the source sent does not match the digest"
		if br, ok := r.(*blobReader); ok && br.received() != "" {
			what = "the source sent " + br.received() + ": it does not match the digest"
		}
		return &blobError{desc: desc, from: d.from, what: what, err: err, quiet: true}
	}
	return &blobError{desc: desc, what: "write to " + d.name, err: err}
}

// blobError is a copy that failed on one blob.
type blobError struct {
	desc  v1.Descriptor
	from  string // the source, when the blob's bytes are at fault
	what  string // what went wrong, "" when err says it
	err   error
	quiet bool // what says it all: err is not printed
}

func (e *blobError) Error() string {
	kind := "blob"
	if store.IsManifest(e.desc.MediaType) {
		kind = "manifest"
	}
	msg := fmt.Sprintf("%s %s (%s)", kind, e.desc.Digest, humanSize(e.desc.Size))
	if e.from != "" {
		msg += " from " + e.from
	}
	if e.what != "" {
		msg += ": " + e.what
	}
	if !e.quiet {
		msg += ": " + describeCause(e.err)
	}
	return msg
}

func (e *blobError) Unwrap() error { return e.err }

// describeCause words a registry's or the network's error for a message.
func describeCause(err error) string {
	err = trimCopyError(err)
	var (
		er  *errcode.ErrorResponse
		cv  *tls.CertificateVerificationError
		ua  x509.UnknownAuthorityError
		hn  x509.HostnameError
		ci  x509.CertificateInvalidError
		op  *net.OpError
		uer *url.Error
	)
	switch {
	case errors.As(err, &er) && er.StatusCode == http.StatusUnauthorized:
		return fmt.Sprintf("authentication failed (%s %s: 401 Unauthorized): check --username and --password-stdin, or the credentials in the config files", er.Method, er.URL.Redacted())
	case errors.As(err, &er) && er.StatusCode == http.StatusForbidden:
		return fmt.Sprintf("access denied (%s %s: 403 Forbidden)", er.Method, er.URL.Redacted())
	case errors.Is(err, auth.ErrBasicCredentialNotFound):
		return "the registry asks for credentials and none were given (--username and --password-stdin, or a config file)"
	case errors.As(err, &cv), errors.As(err, &ua), errors.As(err, &hn), errors.As(err, &ci):
		return "the registry's TLS certificate is not trusted (--ca-file FILE trusts its CA, --insecure skips the check): " + innermost(err)
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return "the registry speaks plain HTTP, not HTTPS (--plain-http)"
	case errors.As(err, &op) && op.Op == "dial":
		return "cannot reach the registry: " + op.Error()
	case errors.As(err, &uer):
		// The request's URL says again what the message says.
		return uer.Err.Error()
	}
	return err.Error()
}

// innermost is the message of err without its *url.Error's method and URL.
func innermost(err error) string {
	var uer *url.Error
	if errors.As(err, &uer) {
		return uer.Err.Error()
	}
	return err.Error()
}

// trimCopyError drops oras-go's copy wrappers ("failed to perform "Push" on
// destination: ..."), which say nothing to a user, keeping what they wrap.
func trimCopyError(err error) error {
	for {
		ce, ok := err.(*oras.CopyError)
		if !ok {
			return err
		}
		err = ce.Err
	}
}

// copyError words the error of a copy: the blob it failed on, or the
// registry's refusal, errors.Is still answering for what it wraps.
func (x *transferRun) copyError(err error) error {
	if err == nil {
		return nil
	}
	var be *blobError
	if errors.As(err, &be) {
		return &wordedError{msg: be.Error(), err: err}
	}
	return &wordedError{msg: describeCause(err), err: err}
}

// resolveError words a failure to find the image of the source: not found
// (exit 2), refused, unreachable.
func (x *transferRun) resolveError(err error) error {
	if errors.Is(err, errdef.ErrNotFound) {
		msg := x.src.String()
		if x.cmd == "push" {
			msg = x.src.tag // as the other commands name a reference of the layout
		}
		if p := x.a.remote.platform; p != nil {
			msg += ": no manifest for platform " + platformString(p)
		}
		// store.ErrNotFound: exit 2, as for a reference missing from the layout.
		return &wordedError{msg: msg + ": " + store.ErrNotFound.Error(), err: fmt.Errorf("%w (%w)", store.ErrNotFound, err)}
	}
	return &wordedError{msg: x.src.String() + ": " + describeCause(err), err: err}
}

// wordedError is an error with its message rewritten for the user.
type wordedError struct {
	msg string
	err error
}

func (e *wordedError) Error() string { return e.msg }
func (e *wordedError) Unwrap() error { return e.err }
