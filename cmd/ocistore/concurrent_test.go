package main

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// TestTwoProcessesCLI: two shells run `ocistore tag` and `ocistore rm` on one
// layout at the same time; no update is lost and the layout stays consistent.
func TestTwoProcessesCLI(t *testing.T) {
	f := newFixture(t)
	const n = 12
	var wg sync.WaitGroup
	fails := make(chan string, 4*n)
	for _, p := range []string{"p", "q"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				for _, args := range [][]string{
					{"tag", "a", fmt.Sprintf("%s-a-%d", p, i)},
					{"tag", "b", fmt.Sprintf("%s-b-%d", p, i)},
					{"rm", fmt.Sprintf("%s-b-%d", p, i)},
				} {
					if r := cli(t, append([]string{"-l", f.dir}, args...)...); r.code != 0 {
						fails <- r.String()
					}
				}
			}
		}()
	}
	wg.Wait()
	close(fails)
	for s := range fails {
		t.Error(s)
	}
	out := must(t, 0, "-l", f.dir, "ls").stdout
	for _, p := range []string{"p", "q"} {
		for i := 0; i < n; i++ {
			if tag := fmt.Sprintf("%s-a-%d ", p, i); !strings.Contains(out, tag) {
				t.Errorf("lost update: %s missing from\n%s", tag, out)
			}
			if tag := fmt.Sprintf("%s-b-%d ", p, i); strings.Contains(out, tag) {
				t.Errorf("lost delete: %s still there", tag)
			}
		}
	}
	// b is still tagged as "b": removing the extra tags freed nothing of it.
	wantContains(t, "ls", out, "b ")
	must(t, 0, "-l", f.dir, "fsck")
}
