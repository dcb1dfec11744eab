// Package registry runs a real OCI distribution registry for tests: Debian's
// docker-registry (distribution 2.8), installed by make tools, started as a
// child process on 127.0.0.1 with a temporary configuration, plain HTTP or
// TLS with a CA the rig generates, with or without htpasswd basic auth.
// Faulty puts a proxy in front of one that truncates a blob, corrupts it,
// or stops answering, for the failure tests of pulls.
//
// Nothing leaves 127.0.0.1, and nothing skips: a missing docker-registry
// fails the test ("run make tools").
package registry

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Binary is the registry program make tools installs (Debian's
// docker-registry package).
const Binary = "docker-registry"

// Bounds on waits that only a broken machine reaches; no test asserts on
// them.
const (
	startTimeout = 30 * time.Second // until the registry answers GET /v2/
	stopTimeout  = 10 * time.Second // from SIGTERM to SIGKILL
)

// Options choose how the registry is served.
type Options struct {
	// TLS serves HTTPS with a server certificate for 127.0.0.1 signed by a
	// CA generated for this registry (Registry.CAFile, CertDir, CertPool).
	TLS bool
	// Auth requires HTTP basic auth (htpasswd, bcrypt) for a generated user
	// (Registry.Username, Password).
	Auth bool
}

// Registry is a running docker-registry. Its fields are fixed for its
// life, across Stop and Restart.
type Registry struct {
	// Host is "127.0.0.1:PORT", the registry part of a reference.
	Host string
	// URL is "http://Host" or, with TLS, "https://Host".
	URL string
	// Dir is the registry's temporary directory: config.yml, registry.log,
	// storage/, and with TLS or Auth the CA, certificate and htpasswd files.
	Dir string
	// CAFile is the PEM file of the CA that signed the server certificate
	// (TLS only).
	CAFile string
	// CertDir holds only ca.crt, a copy of CAFile, in the layout that
	// containers/image tools expect (skopeo --cert-dir) (TLS only).
	CertDir string
	// Username and Password are the credentials the registry accepts (Auth
	// only).
	Username, Password string

	opts    Options
	bin     string
	config  string // path of config.yml
	logPath string
	caPool  *x509.CertPool
	secret  string // http.secret, kept across restarts so uploads survive them

	mu   sync.Mutex
	proc *process // nil when stopped
}

// process is one run of the registry.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // cmd.Wait's error, once done is closed
	log  *os.File
}

// Start starts a registry for the test and stops it when the test ends. It
// fails the test when docker-registry is not installed or does not start;
// the registry's log is printed when the test fails.
func Start(t testing.TB, opts Options) *Registry {
	t.Helper()
	bin, err := exec.LookPath(Binary)
	if err != nil {
		t.Fatalf("%s is not installed (%v): run make tools (installs Debian's docker-registry package, as root)", Binary, err)
	}
	dir := t.TempDir()
	r := &Registry{
		Dir:     dir,
		opts:    opts,
		bin:     bin,
		config:  filepath.Join(dir, "config.yml"),
		logPath: filepath.Join(dir, "registry.log"),
		secret:  randomHex(t, 16),
	}
	// Cleanups run last first: the log is printed after the registry has
	// stopped (and said why), the temp dir removed after both.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s", r.logTail())
		}
	})
	t.Cleanup(r.Stop)

	var tlsConf string
	if opts.TLS {
		c := newCerts(t, dir)
		r.CAFile, r.CertDir, r.caPool = c.caFile, c.certDir, c.pool
		tlsConf = fmt.Sprintf("  tls:\n    certificate: %q\n    key: %q\n", c.certFile, c.keyFile)
	}
	var authConf string
	if opts.Auth {
		r.Username, r.Password = "ocistore", randomHex(t, 12)
		// The registry runs bcrypt on every request it authenticates: the
		// lowest cost keeps that at a millisecond.
		hash, err := bcrypt.GenerateFromPassword([]byte(r.Password), bcrypt.MinCost)
		if err != nil {
			t.Fatalf("bcrypt: %v", err)
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		writeFile(t, htpasswd, []byte(r.Username+":"+string(hash)+"\n"))
		authConf = fmt.Sprintf("auth:\n  htpasswd:\n    realm: ocistore-test\n    path: %q\n", htpasswd)
	}
	scheme := "http"
	if opts.TLS {
		scheme = "https"
	}

	// The first run listens on port 0: the registry picks a free port and
	// logs it ("listening on 127.0.0.1:PORT"). Restarts reuse that port.
	r.writeConfig(t, "127.0.0.1:0", tlsConf, authConf)
	addr := r.start(t)
	r.Host = addr
	r.URL = scheme + "://" + addr
	r.writeConfig(t, addr, tlsConf, authConf)
	r.waitUp(t)
	return r
}

// config.yml: filesystem storage in Dir, deletes enabled (tests clean
// up), no proxy, no notifications, no cache, no debug server, no upload
// purging, no redis.
const configTemplate = `version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: %q
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: %s
%s%s`

func (r *Registry) writeConfig(t testing.TB, addr, tlsConf, authConf string) {
	t.Helper()
	conf := fmt.Sprintf(configTemplate, filepath.Join(r.Dir, "storage"), addr, r.secret, tlsConf, authConf)
	writeFile(t, r.config, []byte(conf))
}

// listening is the line the registry logs once it listens; it names the
// address, with the port it picked for port 0.
var listening = regexp.MustCompile(`msg="listening on ([0-9.]+:[0-9]+)(, tls)?"`)

// start runs docker-registry serve on the config and returns the address it
// listens on, as it logs it.
func (r *Registry) start(t testing.TB) string {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil {
		t.Fatalf("registry %s: already running", r.Host)
	}
	logf, err := os.OpenFile(r.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("registry log: %v", err)
	}
	fmt.Fprintf(logf, "=== %s serve %s\n", r.bin, r.config)
	addrc := make(chan string, 1)
	cmd := exec.Command(r.bin, "serve", r.config)
	cmd.Env = registryEnv()
	cmd.Dir = r.Dir
	w := &lineWatcher{w: logf, found: addrc}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = sysProcAttr()
	cmd.WaitDelay = stopTimeout
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", r.bin, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{}), log: logf}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	r.proc = p
	select {
	case addr := <-addrc:
		return addr
	case <-p.done:
		t.Fatalf("%s exited before listening (%v); its log follows", Binary, p.err)
	case <-time.After(startTimeout):
		t.Fatalf("%s did not log %q within %s; its log follows", Binary, "listening on", startTimeout)
	}
	return ""
}

// waitUp waits until GET /v2/ answers 200, or 401 when auth is on.
func (r *Registry) waitUp(t testing.TB) {
	t.Helper()
	client := &http.Client{Transport: r.Transport()}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(startTimeout)
	for {
		resp, err := client.Get(r.URL + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || (r.opts.Auth && resp.StatusCode == http.StatusUnauthorized) {
				return
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		r.mu.Lock()
		p := r.proc
		r.mu.Unlock()
		if p == nil {
			t.Fatalf("registry %s stopped while starting", r.Host)
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited (%v); last GET %s/v2/: %v; its log follows", Binary, p.err, r.URL, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not answer GET %s/v2/ after %s: %v; its log follows", Binary, r.URL, startTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops the registry: SIGTERM, then SIGKILL if it has not exited
// after a while. Requests in flight are cut off (the registry drains
// nothing: no http.draintimeout), new connections are refused. It does
// nothing when the registry is stopped already, and may be called from any
// goroutine, while a pull runs.
func (r *Registry) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.proc
	if p == nil {
		return
	}
	r.proc = nil
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	fmt.Fprintf(p.log, "=== stopped: %v\n", p.err)
	p.log.Close()
}

// Restart stops the registry if it runs and starts it again on the same
// port with the same storage. It fails the test when the port was taken in
// between, or the registry does not come up; call it from the test's
// goroutine.
func (r *Registry) Restart(t testing.TB) {
	t.Helper()
	r.Stop()
	if addr := r.start(t); addr != r.Host {
		t.Fatalf("registry restarted on %s, want %s", addr, r.Host)
	}
	r.waitUp(t)
}

// CertPool returns a pool holding the registry's CA (nil without TLS: the
// system's roots are used then).
func (r *Registry) CertPool() *x509.CertPool { return r.caPool }

// Transport returns a transport to the registry that trusts its CA, uses
// no proxy and sends no credentials.
func (r *Registry) Transport() *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	if r.caPool != nil {
		tr.TLSClientConfig = &tls.Config{RootCAs: r.caPool, MinVersion: tls.VersionTLS12}
	}
	return tr
}

// Client returns an HTTP client for the registry: it trusts the CA and,
// with Auth, sends the registry's credentials (basic auth) on every
// request.
func (r *Registry) Client() *http.Client {
	var rt http.RoundTripper = r.Transport()
	if r.opts.Auth {
		rt = basicAuth{rt: rt, user: r.Username, pass: r.Password}
	}
	return &http.Client{Transport: rt}
}

// basicAuth adds credentials to every request.
type basicAuth struct {
	rt         http.RoundTripper
	user, pass string
}

func (b basicAuth) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.SetBasicAuth(b.user, b.pass)
	return b.rt.RoundTrip(req)
}

// Creds returns "user:password" for skopeo's --creds (Auth only).
func (r *Registry) Creds() string { return r.Username + ":" + r.Password }

// registryEnv is the environment of the registry: the test's, without the
// REGISTRY_* variables that would override the config (distribution reads
// REGISTRY_HTTP_ADDR and the like) or the OpenTelemetry ones.
func registryEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "REGISTRY_") || strings.HasPrefix(kv, "OTEL_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// logTail returns the end of the registry's log, for failure messages.
func (r *Registry) logTail() string {
	const max = 32 << 10
	b, err := os.ReadFile(r.logPath)
	if err != nil {
		return fmt.Sprintf("docker-registry log: %v", err)
	}
	if len(b) > max {
		b = append([]byte("...\n"), b[len(b)-max:]...)
	}
	return fmt.Sprintf("docker-registry log (%s):\n%s", r.logPath, b)
}

// lineWatcher copies the registry's output to its log file and sends the
// address of the first "listening on" line to found.
type lineWatcher struct {
	w     io.Writer
	found chan<- string
	mu    sync.Mutex
	line  []byte // the unfinished last line
	sent  bool
}

func (l *lineWatcher) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.sent {
		l.line = append(l.line, p...)
		for {
			i := bytes.IndexByte(l.line, '\n')
			if i < 0 {
				break
			}
			if m := listening.FindSubmatch(l.line[:i]); m != nil {
				l.found <- string(m[1])
				l.sent, l.line = true, nil
				break
			}
			l.line = l.line[i+1:]
		}
	}
	return l.w.Write(p)
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
