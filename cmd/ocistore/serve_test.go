package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/ocistore/ocistore/internal/testing/conformance"
	"github.com/ocistore/ocistore/internal/testing/registry"
)

// served is an `ocistore serve` process started by startServe.
type served struct {
	cmd    *exec.Cmd
	addr   string // host:port
	url    string // scheme://host:port
	stderr *strings.Builder
	done   chan error
}

// startServe runs `ocistore -l dir serve --listen 127.0.0.1:0 args...` and
// waits for the line that says where it listens. Cleanup stops it (SIGTERM)
// if the test did not.
func startServe(t *testing.T, dir string, args ...string) *served {
	t.Helper()
	return startServeEnv(t, nil, dir, args...)
}

// startServeEnv is startServe with env added to the server's environment
// (childEnv): OCISTORE_CRASHPOINT, for one.
func startServeEnv(t *testing.T, env []string, dir string, args ...string) *served {
	t.Helper()
	a := append([]string{"-l", dir, "serve", "--listen", "127.0.0.1:0"}, args...)
	cmd := exec.Command(bin, a...)
	cmd.Env = childEnv(env)
	pr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &served{cmd: cmd, stderr: &strings.Builder{}, done: make(chan error, 1)}
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(nil, 1<<20)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			s.stderr.WriteString(line + "\n")
			if _, u, ok := strings.Cut(line, " on "); ok && !sent && strings.HasPrefix(line, "ocistore: serving ") {
				found <- u
				sent = true
			}
		}
		if !sent {
			close(found)
		}
		s.done <- cmd.Wait()
	}()
	select {
	case u, ok := <-found:
		if !ok {
			t.Fatalf("ocistore serve ended before it listened:\n%s", s.stderr)
		}
		s.url = u
		s.addr = u[strings.Index(u, "://")+3:]
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatal("ocistore serve did not say where it listens within a minute")
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			s.stop(t)
		}
	})
	return s
}

// stop sends SIGTERM and returns the exit code once the server has gone.
func (s *served) stop(t *testing.T) int {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(time.Minute):
		s.cmd.Process.Kill()
		<-s.done
		t.Errorf("ocistore serve did not stop within a minute of SIGTERM")
	}
	return s.cmd.ProcessState.ExitCode()
}

// TestServeConformance runs the OCI distribution-spec conformance suite,
// every workflow on and sha512, against ocistore serve: not one check
// may fail. The layout is then clean (fsck), and the server stops on
// SIGTERM with exit status 0.
func TestServeConformance(t *testing.T) {
	t.Parallel()
	suite := conformance.Build(t)
	dir := filepath.Join(t.TempDir(), "layout")
	if r := cli(t, "-l", dir, "init"); r.code != 0 {
		t.Fatalf("init: %s", r)
	}
	srv := startServe(t, dir)
	sum := conformance.Run(t, suite, conformance.Everything(srv.addr))
	t.Logf("ocistore serve: %s", sum)
	if sum.Fail+sum.Error > 0 || sum.Pass < 900 {
		t.Errorf("conformance: %s\n%s", sum, sum.Details())
	}
	for path, want := range map[string]string{"/healthz": "ok", "/metrics": `ocistore_http_requests_total{code="201",method="PUT",route="manifest"}`} {
		resp, err := http.Get(srv.url + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %d, want 200 with %q:\n%.2000s", path, resp.StatusCode, want, b)
		}
	}
	if code := srv.stop(t); code != 0 {
		t.Errorf("serve exit status %d after SIGTERM, want 0:\n%s", code, srv.stderr)
	}
	if !strings.Contains(srv.stderr.String(), "route=manifest") && !strings.Contains(srv.stderr.String(), `"route":"manifest"`) {
		t.Errorf("no access log line for a manifest request on stderr:\n%.3000s", srv.stderr)
	}
	if r := cli(t, "-l", dir, "fsck"); r.code != 0 {
		t.Errorf("fsck after the conformance suite: %s", r)
	}
}

// TestServeTLSAuth: the suite again, over HTTPS and with htpasswd basic
// auth; a request without credentials gets 401 with the challenge, and
// /healthz needs none.
func TestServeTLSAuth(t *testing.T) {
	t.Parallel()
	suite := conformance.Build(t)
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "layout")
	if r := cli(t, "-l", dir, "init"); r.code != 0 {
		t.Fatalf("init: %s", r)
	}
	certs := registry.NewCerts(t, tmp)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(tmp, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("alice:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServe(t, dir, "--tls-cert", certs.CertFile, "--tls-key", certs.KeyFile, "--htpasswd", htpasswd)
	if !strings.HasPrefix(srv.url, "https://") {
		t.Fatalf("serving %s, want https", srv.url)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: certs.Pool}}}
	get := func(path, user, pass string) *http.Response {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, srv.url+path, nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if r := get("/v2/", "", ""); r.StatusCode != 401 || !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Basic ") {
		t.Errorf("GET /v2/ without credentials: %d %q, want 401 with a Basic challenge", r.StatusCode, r.Header.Get("WWW-Authenticate"))
	}
	if r := get("/v2/", "alice", "wrong"); r.StatusCode != 401 {
		t.Errorf("GET /v2/ with a wrong password: %d, want 401", r.StatusCode)
	}
	if r := get("/v2/", "alice", "s3cret"); r.StatusCode != 200 {
		t.Errorf("GET /v2/ with credentials: %d, want 200", r.StatusCode)
	}
	if r := get("/healthz", "", ""); r.StatusCode != 200 {
		t.Errorf("GET /healthz: %d, want 200 without credentials", r.StatusCode)
	}
	cfg := conformance.Everything(srv.addr)
	cfg.TLS, cfg.CAFile = conformance.TLSEnabled, certs.CAFile
	cfg.Username, cfg.Password = "alice", "s3cret"
	sum := conformance.Run(t, suite, cfg)
	t.Logf("ocistore serve (TLS, basic auth): %s", sum)
	if sum.Fail+sum.Error > 0 || sum.Pass < 900 {
		t.Errorf("conformance over TLS with auth: %s\n%s", sum, sum.Details())
	}
}
