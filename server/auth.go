package server

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// The verification cache of Htpasswd: a successful bcrypt verification is
// remembered for cacheTTL, for at most cacheMax credentials at a time.
const (
	cacheTTL = 5 * time.Minute
	cacheMax = 1024
)

// unauthorizedBody is the distribution spec's error body of a 401.
const unauthorizedBody = `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}`

// Htpasswd authenticates requests with HTTP Basic credentials checked
// against an htpasswd file of bcrypt hashes (what htpasswd -B writes). It
// is made by LoadHtpasswd; its methods may be called from any goroutine.
//
// bcrypt is slow on purpose (tens of milliseconds at cost 10), and a client
// sends its credentials with every request: a pull of many blobs would
// cost one bcrypt each. So a successful verification is remembered in
// memory for 5 minutes (for at most 1024 credentials): keyed by the user
// and an HMAC of the password under a key of the process, never the
// password itself, and valid only while the user's hash in the file is the
// one it was verified against. A failure is never remembered: wrong
// credentials cost a bcrypt every time.
type Htpasswd struct {
	// Exempt lists the request paths (exact URL paths) served without
	// credentials; LoadHtpasswd sets it to /healthz only. Change it before
	// calling Wrap, which reads it once.
	Exempt []string

	path    string
	file    atomic.Pointer[htpasswdFile]
	cache   authCache
	compare func(hash, password []byte) error // bcrypt.CompareHashAndPassword; tests count the calls
}

// htpasswdFile is what an htpasswd file says.
type htpasswdFile struct {
	users map[string][]byte // user name -> bcrypt hash
	// dummy is one of the hashes, which a password of an unknown user is
	// checked against (and refused) so that the time of a refusal does
	// not tell whether the user exists.
	dummy []byte
}

// LoadHtpasswd reads the htpasswd file at path: one user:hash line per
// user, the hash a bcrypt one ($2a$, $2b$ or $2y$); blank lines and lines
// starting with # are skipped. A line of another form, a hash of another
// kind, a user on two lines and a file without users are errors naming
// the file (and the line).
func LoadHtpasswd(path string) (*Htpasswd, error) {
	h := &Htpasswd{Exempt: []string{"/healthz"}, path: path, compare: bcrypt.CompareHashAndPassword}
	h.cache.init(time.Now)
	if err := h.Reload(); err != nil {
		return nil, err
	}
	return h, nil
}

// Reload reads the file again (the server calls it on SIGHUP, say). On an
// error the users read before stay in force. Remembered verifications of
// a user whose hash changed, or who is gone, no longer count.
func (h *Htpasswd) Reload() error {
	data, err := os.ReadFile(h.path)
	if err != nil {
		return fmt.Errorf("htpasswd: %w", err)
	}
	f, err := parseHtpasswd(h.path, data)
	if err != nil {
		return err
	}
	h.file.Store(f)
	return nil
}

// parseHtpasswd parses the htpasswd file data, read from path.
func parseHtpasswd(path string, data []byte) (*htpasswdFile, error) {
	f := &htpasswdFile{users: make(map[string][]byte)}
	lineOf := make(map[string]int)
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		line = strings.TrimRight(line, " \t\r")
		if t := strings.TrimLeft(line, " \t"); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		switch {
		case !ok:
			return nil, fmt.Errorf("%s:%d: not a user:hash line", path, n)
		case user == "":
			return nil, fmt.Errorf("%s:%d: empty user name", path, n)
		case !strings.HasPrefix(hash, "$2a$") && !strings.HasPrefix(hash, "$2b$") && !strings.HasPrefix(hash, "$2y$"):
			return nil, fmt.Errorf("%s:%d: user %q: not a bcrypt hash ($2a$, $2b$ or $2y$): only bcrypt is accepted (htpasswd -B)", path, n, user)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil || len(hash) != 60 {
			if err == nil {
				err = fmt.Errorf("%d characters, not 60", len(hash))
			}
			return nil, fmt.Errorf("%s:%d: user %q: malformed bcrypt hash: %v", path, n, user, err)
		}
		if prev, dup := lineOf[user]; dup {
			return nil, fmt.Errorf("%s:%d: user %q is already on line %d", path, n, user, prev)
		}
		lineOf[user] = n
		f.users[user] = []byte(hash)
		if f.dummy == nil {
			f.dummy = []byte(hash)
		}
	}
	if len(f.users) == 0 {
		return nil, fmt.Errorf("%s: no users", path)
	}
	return f, nil
}

// Wrap returns a handler that serves next the requests with valid Basic
// credentials, and the requests for the paths of h.Exempt (as read now)
// without any; it answers the others with 401 and the distribution spec's
// UNAUTHORIZED error. The user of an authenticated request is in its
// context for next (UserFromContext).
func (h *Htpasswd) Wrap(next http.Handler) http.Handler {
	exempt := slices.Clone(h.Exempt)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slices.Contains(exempt, r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		user, pass, ok := r.BasicAuth()
		if !ok || !h.authenticate(user, pass) {
			unauthorized(w)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey{}, user)))
	})
}

// authenticate reports whether pass is user's password.
func (h *Htpasswd) authenticate(user, pass string) bool {
	f := h.file.Load()
	hash, ok := f.users[user]
	if !ok {
		_ = h.compare(f.dummy, []byte(pass)) // as long as a known user's refusal
		return false
	}
	key := h.cache.key(user, pass)
	if h.cache.valid(key, hash) {
		return true
	}
	if h.compare(hash, []byte(pass)) != nil {
		return false
	}
	h.cache.add(key, hash)
	return true
}

// unauthorized answers a request with 401 and the distribution spec's
// UNAUTHORIZED error.
func unauthorized(w http.ResponseWriter) {
	hd := w.Header()
	hd.Set("WWW-Authenticate", `Basic realm="ocistore"`)
	hd.Set("Docker-Distribution-API-Version", "registry/2.0")
	hd.Set("Content-Type", "application/json")
	hd.Set("Content-Length", strconv.Itoa(len(unauthorizedBody)))
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = io.WriteString(w, unauthorizedBody)
}

type userKey struct{}

// UserFromContext returns the user that Htpasswd.Wrap authenticated for
// the request of ctx, if it did.
func UserFromContext(ctx context.Context) (string, bool) {
	u, ok := ctx.Value(userKey{}).(string)
	return u, ok
}

// authCache remembers successful verifications (see Htpasswd).
type authCache struct {
	mac     []byte // the HMAC key, random
	now     func() time.Time
	mu      sync.Mutex
	entries map[cacheKey]cacheEntry
}

type cacheKey struct {
	user string
	mac  [sha256.Size]byte // HMAC-SHA256 of the password
}

type cacheEntry struct {
	hash    []byte // the hash the password was verified against
	expires time.Time
}

func (c *authCache) init(now func() time.Time) {
	c.mac = make([]byte, 32)
	rand.Read(c.mac) // never fails (crypto/rand panics if it cannot)
	c.now = now
	c.entries = make(map[cacheKey]cacheEntry)
}

func (c *authCache) key(user, pass string) cacheKey {
	m := hmac.New(sha256.New, c.mac)
	m.Write([]byte(pass)) // a hash.Hash never fails
	k := cacheKey{user: user}
	m.Sum(k.mac[:0])
	return k
}

// valid reports whether k was verified against hash and has not expired.
func (c *authCache) valid(k cacheKey, hash []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k]
	if !ok {
		return false
	}
	if !c.now().Before(e.expires) || !bytes.Equal(e.hash, hash) {
		delete(c.entries, k)
		return false
	}
	return true
}

// add remembers that k was verified against hash. When the cache is full,
// it drops the expired entries, and if none was, an arbitrary one.
func (c *authCache) add(k cacheKey, hash []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if _, ok := c.entries[k]; !ok && len(c.entries) >= cacheMax {
		for ek, e := range c.entries {
			if !now.Before(e.expires) {
				delete(c.entries, ek)
			}
		}
		if len(c.entries) >= cacheMax {
			for ek := range c.entries {
				delete(c.entries, ek)
				break
			}
		}
	}
	c.entries[k] = cacheEntry{hash: hash, expires: now.Add(cacheTTL)}
}
