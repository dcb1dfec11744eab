package main

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progress draws one status line on a terminal while long work runs: the
// label, the elapsed time and, once Set has been called, "done/total". It
// draws nothing when the output is not a terminal. A nil *progress is valid
// and does nothing.
type progress struct {
	w     io.Writer
	label string
	start time.Time
	stop  chan struct{}
	wg    sync.WaitGroup

	// mu guards the counters Set updates while the ticker draws.
	mu struct {
		sync.Mutex
		done, total int64
	}
}

const progressInterval = 200 * time.Millisecond

// startProgress starts drawing on w when tty is true; otherwise it returns nil.
func startProgress(w io.Writer, tty bool, label string) *progress {
	if !tty {
		return nil
	}
	p := &progress{w: w, label: label, start: time.Now(), stop: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(progressInterval)
		defer t.Stop()
		drawn := false
		for {
			select {
			case <-p.stop:
				if drawn {
					fmt.Fprint(p.w, "\r\x1b[K") // clear the line
				}
				return
			case <-t.C:
				p.draw()
				drawn = true
			}
		}
	}()
	return p
}

// Set records how far the work is, e.g. blobs copied out of total.
func (p *progress) Set(done, total int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.mu.done, p.mu.total = done, total
	p.mu.Unlock()
}

func (p *progress) draw() {
	p.mu.Lock()
	done, total := p.mu.done, p.mu.total
	p.mu.Unlock()
	line := fmt.Sprintf("%s %.1fs", p.label, time.Since(p.start).Seconds())
	if total > 0 {
		line += fmt.Sprintf(" %d/%d", done, total)
	}
	fmt.Fprintf(p.w, "\r\x1b[K%s", line)
}

// Stop clears the line and waits for the drawing to end.
func (p *progress) Stop() {
	if p == nil {
		return
	}
	close(p.stop)
	p.wg.Wait()
}
