package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// hashOf returns a bcrypt hash of password at the minimum cost, with the
// version prefix prefix ("$2a$", "$2b$" or "$2y$": the same algorithm).
func hashOf(t *testing.T, password, prefix string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return prefix + strings.TrimPrefix(string(h), "$2a$")
}

// writeFile writes content to the file name in dir and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// loadUsers writes an htpasswd file of the user:password pairs (bcrypt
// $2y$) and loads it.
func loadUsers(t *testing.T, pairs ...string) (*Htpasswd, string) {
	t.Helper()
	var b strings.Builder
	for i := 0; i < len(pairs); i += 2 {
		fmt.Fprintf(&b, "%s:%s\n", pairs[i], hashOf(t, pairs[i+1], "$2y$"))
	}
	p := writeFile(t, t.TempDir(), "htpasswd", b.String())
	h, err := LoadHtpasswd(p)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

// countCompares makes h count its bcrypt verifications.
func countCompares(h *Htpasswd) *atomic.Int64 {
	var n atomic.Int64
	h.compare = func(hash, password []byte) error {
		n.Add(1)
		return bcrypt.CompareHashAndPassword(hash, password)
	}
	return &n
}

// request sends a GET of path to hd, with Basic credentials if user is
// not "".
func request(hd http.Handler, path, user, pass string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, path, nil)
	if user != "" {
		r.SetBasicAuth(user, pass)
	}
	w := httptest.NewRecorder()
	hd.ServeHTTP(w, r)
	return w
}

// userEcho answers 200 with the user UserFromContext finds, or "-".
var userEcho = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	u, ok := UserFromContext(r.Context())
	if !ok {
		u = "-"
	}
	io.WriteString(w, u)
})

func TestHtpasswdWrap(t *testing.T) {
	h, _ := loadUsers(t, "alice", "s3cret", "bob", "hunter2")
	hd := h.Wrap(userEcho)
	tests := []struct {
		name, path, user, pass string
		header                 string // an Authorization header instead of user and pass
		wantCode               int
		wantBody               string // for a 200
	}{
		{name: "good", path: "/v2/", user: "alice", pass: "s3cret", wantCode: 200, wantBody: "alice"},
		{name: "good other user", path: "/v2/a/manifests/latest", user: "bob", pass: "hunter2", wantCode: 200, wantBody: "bob"},
		{name: "bad password", path: "/v2/", user: "alice", pass: "hunter2", wantCode: 401},
		{name: "empty password", path: "/v2/", user: "alice", pass: "", wantCode: 401},
		{name: "password prefix", path: "/v2/", user: "alice", pass: "s3cre", wantCode: 401},
		{name: "unknown user", path: "/v2/", user: "carol", pass: "s3cret", wantCode: 401},
		{name: "user name case", path: "/v2/", user: "Alice", pass: "s3cret", wantCode: 401},
		{name: "no credentials", path: "/v2/", wantCode: 401},
		{name: "bearer", path: "/v2/", header: "Bearer abc", wantCode: 401},
		{name: "malformed basic", path: "/v2/", header: "Basic !!!", wantCode: 401},
		{name: "exempt healthz", path: "/healthz", wantCode: 200, wantBody: "-"},
		{name: "exempt healthz, bad credentials", path: "/healthz", user: "alice", pass: "x", wantCode: 200, wantBody: "-"},
		{name: "healthz subpath is not exempt", path: "/healthz/x", wantCode: 401},
		{name: "dot-dot past healthz is not exempt", path: "/healthz/../v2/", wantCode: 401},
		{name: "metrics not exempt by default", path: "/metrics", wantCode: 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, tt.path, nil)
			if tt.user != "" {
				r.SetBasicAuth(tt.user, tt.pass)
			}
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			w := httptest.NewRecorder()
			hd.ServeHTTP(w, r)
			if w.Code != tt.wantCode {
				t.Fatalf("status %d, want %d (body %q)", w.Code, tt.wantCode, w.Body)
			}
			if tt.wantCode == 200 {
				if w.Body.String() != tt.wantBody {
					t.Errorf("body %q, want %q", w.Body, tt.wantBody)
				}
				return
			}
			checkUnauthorized(t, w)
		})
	}
}

// checkUnauthorized checks that w is the distribution spec's 401.
func checkUnauthorized(t *testing.T, w *httptest.ResponseRecorder) {
	t.Helper()
	for k, v := range map[string]string{
		"WWW-Authenticate":                `Basic realm="ocistore"`,
		"Docker-Distribution-API-Version": "registry/2.0",
		"Content-Type":                    "application/json",
		"Content-Length":                  fmt.Sprint(len(unauthorizedBody)),
	} {
		if got := w.Header().Get(k); got != v {
			t.Errorf("header %s: %q, want %q", k, got, v)
		}
	}
	var body struct {
		Errors []struct {
			Code    string          `json:"code"`
			Message string          `json:"message"`
			Detail  json.RawMessage `json:"detail"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %q: %v", w.Body, err)
	}
	if len(body.Errors) != 1 || body.Errors[0].Code != "UNAUTHORIZED" ||
		body.Errors[0].Message != "authentication required" || string(body.Errors[0].Detail) != "null" {
		t.Errorf("body %q: want one UNAUTHORIZED error with detail null", w.Body)
	}
}

func TestHtpasswdExempt(t *testing.T) {
	h, _ := loadUsers(t, "alice", "s3cret")
	h.Exempt = append(h.Exempt, "/metrics")
	hd := h.Wrap(userEcho)
	h.Exempt = nil // Wrap read it already
	for _, p := range []string{"/healthz", "/metrics"} {
		if w := request(hd, p, "", ""); w.Code != 200 {
			t.Errorf("%s without credentials: status %d, want 200", p, w.Code)
		}
	}
	if w := request(hd, "/v2/", "", ""); w.Code != 401 {
		t.Errorf("/v2/ without credentials: status %d, want 401", w.Code)
	}
	if w := request(h.Wrap(userEcho), "/healthz", "", ""); w.Code != 401 {
		t.Errorf("/healthz with Exempt emptied before Wrap: status %d, want 401", w.Code)
	}
}

func TestHtpasswdPrefixes(t *testing.T) {
	for _, prefix := range []string{"$2a$", "$2b$", "$2y$"} {
		t.Run(prefix, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "htpasswd", "alice:"+hashOf(t, "pw", prefix)+"\n")
			h, err := LoadHtpasswd(p)
			if err != nil {
				t.Fatal(err)
			}
			if w := request(h.Wrap(userEcho), "/v2/", "alice", "pw"); w.Code != 200 {
				t.Errorf("status %d, want 200", w.Code)
			}
			if w := request(h.Wrap(userEcho), "/v2/", "alice", "px"); w.Code != 401 {
				t.Errorf("wrong password: status %d, want 401", w.Code)
			}
		})
	}
}

func TestLoadHtpasswdFormat(t *testing.T) {
	a, b := hashOf(t, "pa", "$2y$"), hashOf(t, "pb", "$2b$")
	content := "# users of the registry\r\n\r\n  # indented comment\nalice:" + a + "\r\n\n\t\nbob:" + b + "  \n"
	p := writeFile(t, t.TempDir(), "htpasswd", content)
	h, err := LoadHtpasswd(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(h.file.Load().users); got != 2 {
		t.Errorf("%d users, want 2", got)
	}
	hd := h.Wrap(userEcho)
	for _, c := range [][2]string{{"alice", "pa"}, {"bob", "pb"}} {
		if w := request(hd, "/v2/", c[0], c[1]); w.Code != 200 {
			t.Errorf("%s: status %d, want 200", c[0], w.Code)
		}
	}
}

func TestLoadHtpasswdErrors(t *testing.T) {
	good := hashOf(t, "pw", "$2y$")
	tests := []struct {
		name, content, want string // want: the error after "<path>:"
	}{
		{"no colon", "# c\nalice " + good + "\n", "2: not a user:hash line"},
		{"empty user", ":" + good + "\n", "1: empty user name"},
		{"md5", "alice:" + good + "\nbob:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\n", `2: user "bob": not a bcrypt hash`},
		{"sha1", "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", `1: user "alice": not a bcrypt hash`},
		{"crypt", "alice:rl0uE5ykfrmKs\n", `1: user "alice": not a bcrypt hash`},
		{"plain text", "alice:pw\n", `1: user "alice": not a bcrypt hash`},
		{"2x", "alice:$2x$" + good[4:] + "\n", `1: user "alice": not a bcrypt hash`},
		{"truncated", "alice:" + good[:40] + "\n", `1: user "alice": malformed bcrypt hash`},
		{"trailing garbage", "alice:" + good + "x\n", `1: user "alice": malformed bcrypt hash: 61 characters`},
		{"bad cost", "alice:$2y$99$" + good[7:] + "\n", `1: user "alice": malformed bcrypt hash`},
		{"duplicate", "alice:" + good + "\nbob:" + good + "\nalice:" + good + "\n", `3: user "alice" is already on line 1`},
		{"empty", "", " no users"},
		{"comments only", "# nobody\n\n", " no users"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "htpasswd", tt.content)
			h, err := LoadHtpasswd(p)
			if err == nil {
				t.Fatalf("loaded %d users, want an error", len(h.file.Load().users))
			}
			want := p + ":" + tt.want
			if !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %q, want it to start with %q", err, want)
			}
			if strings.Contains(err.Error(), good[7:]) {
				t.Errorf("error %q shows the hash", err)
			}
		})
	}
	if _, err := LoadHtpasswd(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing file: error %v, want one naming the file", err)
	}
}

func TestHtpasswdCache(t *testing.T) {
	h, path := loadUsers(t, "alice", "s3cret", "bob", "hunter2")
	n := countCompares(h)
	now := time.Now()
	h.cache.now = func() time.Time { return now }
	hd := h.Wrap(userEcho)
	check := func(user, pass string, wantCode int, wantCompares int64) {
		t.Helper()
		before := n.Load()
		if w := request(hd, "/v2/", user, pass); w.Code != wantCode {
			t.Errorf("%s:%s: status %d, want %d", user, pass, w.Code, wantCode)
		}
		if got := n.Load() - before; got != wantCompares {
			t.Errorf("%s:%s: %d bcrypt verifications, want %d", user, pass, got, wantCompares)
		}
	}
	check("alice", "s3cret", 200, 1)
	check("alice", "s3cret", 200, 0) // remembered
	check("alice", "s3cret", 200, 0)
	check("alice", "wrong", 401, 1)  // a failure is never remembered ...
	check("alice", "wrong", 401, 1)  // ... each costs a bcrypt
	check("carol", "s3cret", 401, 1) // unknown: checked against another user's hash all the same
	check("bob", "s3cret", 401, 1)   // alice's remembered password is not bob's
	check("alice", "s3cret", 200, 0)

	now = now.Add(cacheTTL - time.Second)
	check("alice", "s3cret", 200, 0)
	now = now.Add(time.Second)
	check("alice", "s3cret", 200, 1) // expired, verified again
	check("alice", "s3cret", 200, 0)

	// alice's password changes: the remembered one no longer counts.
	writeFile(t, filepath.Dir(path), filepath.Base(path), "alice:"+hashOf(t, "new", "$2y$")+"\nbob:"+hashOf(t, "hunter2", "$2y$")+"\n")
	if err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	check("alice", "s3cret", 401, 1)
	check("alice", "new", 200, 1)
	check("alice", "new", 200, 0)

	// alice is gone: her remembered password no longer counts.
	writeFile(t, filepath.Dir(path), filepath.Base(path), "bob:"+hashOf(t, "hunter2", "$2y$")+"\n")
	if err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	check("alice", "new", 401, 1)
}

func TestHtpasswdReloadError(t *testing.T) {
	h, path := loadUsers(t, "alice", "s3cret")
	writeFile(t, filepath.Dir(path), filepath.Base(path), "alice:s3cret\n")
	err := h.Reload()
	if err == nil || !strings.HasPrefix(err.Error(), path+":1:") {
		t.Fatalf("Reload of a plain-text password: error %v, want one naming %s:1", err, path)
	}
	if w := request(h.Wrap(userEcho), "/v2/", "alice", "s3cret"); w.Code != 200 {
		t.Errorf("after a failed Reload: status %d, want 200 (the users read before stay)", w.Code)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := h.Reload(); err == nil {
		t.Error("Reload of a removed file: no error")
	}
}

func TestAuthCacheBound(t *testing.T) {
	var c authCache
	now := time.Now()
	c.init(func() time.Time { return now })
	hash := []byte("h")
	for i := range cacheMax {
		c.add(c.key(fmt.Sprint("u", i), "p"), hash)
	}
	if len(c.entries) != cacheMax {
		t.Fatalf("%d entries, want %d", len(c.entries), cacheMax)
	}
	c.add(c.key("extra", "p"), hash)
	if len(c.entries) != cacheMax || !c.valid(c.key("extra", "p"), hash) {
		t.Fatalf("full cache: %d entries after an add, want %d with the new one", len(c.entries), cacheMax)
	}
	// Re-adding a present key evicts nothing.
	c.add(c.key("extra", "p"), hash)
	if len(c.entries) != cacheMax {
		t.Fatalf("%d entries after re-adding a present key, want %d", len(c.entries), cacheMax)
	}
	// When the cache is full, the expired entries go first.
	now = now.Add(cacheTTL)
	c.add(c.key("late", "p"), hash)
	if len(c.entries) != 1 || !c.valid(c.key("late", "p"), hash) {
		t.Errorf("%d entries after an add to a full cache of expired entries, want only the new one", len(c.entries))
	}
	if c.valid(c.key("late", "p"), []byte("other hash")) {
		t.Error("an entry verified against another hash is valid")
	}
	if c.valid(c.key("late", "q"), hash) {
		t.Error("an entry is valid for another password")
	}
}

func TestHtpasswdConcurrent(t *testing.T) {
	h, _ := loadUsers(t, "alice", "s3cret", "bob", "hunter2")
	hd := h.Wrap(userEcho)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 20 {
				user, pass, want := "alice", "s3cret", 200
				switch (g + i) % 3 {
				case 1:
					user, pass = "bob", "hunter2"
				case 2:
					pass, want = "nope", 401
				}
				if w := request(hd, "/v2/", user, pass); w.Code != want {
					t.Errorf("%s:%s: status %d, want %d", user, pass, w.Code, want)
				}
			}
		})
	}
	wg.Go(func() {
		for range 5 {
			if err := h.Reload(); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
}

func TestUserFromContext(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	if u, ok := UserFromContext(r.Context()); ok {
		t.Errorf("UserFromContext of a request never authenticated: %q, true", u)
	}
}

// TestAccessLogUser: the access log around Htpasswd logs the user it
// authenticated, and for a refused request the user name claimed; never
// the password.
func TestAccessLogUser(t *testing.T) {
	h, _ := loadUsers(t, "alice", "s3cret")
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	hd := AccessLog(log, h.Wrap(userEcho))
	for _, c := range []struct {
		user, pass string
		code       int
	}{{"alice", "s3cret", 200}, {"alice", "guess", 401}, {"mallory", "guess", 401}, {"", "", 401}} {
		buf.Reset()
		request(hd, "/v2/", c.user, c.pass)
		line := parseLogLine(t, buf.Bytes())
		if line["status"] != float64(c.code) {
			t.Errorf("%s: status %v, want %d", c.user, line["status"], c.code)
		}
		if got, _ := line["user"].(string); got != c.user {
			t.Errorf("%s:%s: user %q logged, want %q", c.user, c.pass, got, c.user)
		}
		if _, ok := line["user"]; c.user == "" && ok {
			t.Errorf("no credentials: user %v logged", line["user"])
		}
		if c.pass != "" && strings.Contains(buf.String(), c.pass) {
			t.Errorf("the password %q is in the log: %s", c.pass, buf.String())
		}
	}

	// Htpasswd outside the access log: the user is in the context.
	buf.Reset()
	request(h.Wrap(AccessLog(log, userEcho)), "/v2/", "alice", "s3cret")
	if line := parseLogLine(t, buf.Bytes()); line["user"] != "alice" {
		t.Errorf("access log inside Htpasswd: user %v, want alice", line["user"])
	}
}
