package netns

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"time"
)

// LogEntry is one line of a JSON log written by vtepd.
type LogEntry map[string]any

// Str returns a string field, or "".
func (e LogEntry) Str(key string) string {
	s, _ := e[key].(string)
	return s
}

// Entries returns the process's JSON log lines whose message is msg.
// Lines that are not JSON (etcd's, a crash trace) are skipped.
func (p *Process) Entries(msg string) []LogEntry {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	p.read.refresh(p.LogPath)
	return slices.Clone(p.read.byMsg[msg])
}

// WaitEntries waits up to timeout for the process's log to hold at least
// n lines whose message is msg, and returns them. A test that has just
// seen vtepd's kernel change must wait for the line reporting it: vtepd
// writes to the kernel first and logs after, so the change can be seen
// before the line is written.
func (p *Process) WaitEntries(msg string, n int, timeout time.Duration) ([]LogEntry, error) {
	var got []LogEntry
	err := poll(timeout, func() error {
		if got = p.Entries(msg); len(got) < n {
			return fmt.Errorf("%d log lines %q, want %d", len(got), msg, n)
		}
		return nil
	})
	return got, err
}

// logReader reads a log as it grows: tests poll logs every few
// milliseconds, and a debug log of a miss storm runs to megabytes. Each
// refresh reads only what was appended since the last one, and parses only
// the lines completed since; the entries parsed are kept by message.
type logReader struct {
	f      *os.File
	closed bool
	data   []byte // everything read so far
	parsed int    // data[:parsed] is whole lines, all parsed
	byMsg  map[string][]LogEntry
}

func (r *logReader) refresh(path string) {
	if r.closed {
		return
	}
	if r.f == nil {
		f, err := os.Open(path)
		if err != nil {
			return
		}
		r.f = f
		r.byMsg = map[string][]LogEntry{}
	}
	// The file only grows (it is opened for appending), so reading on
	// from where the last read stopped sees exactly what is new.
	if b, err := io.ReadAll(r.f); err == nil || len(b) > 0 {
		r.data = append(r.data, b...)
	}
	for {
		nl := bytes.IndexByte(r.data[r.parsed:], '\n')
		if nl < 0 {
			return
		}
		line := r.data[r.parsed : r.parsed+nl]
		r.parsed += nl + 1
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var e LogEntry
		if json.Unmarshal(line, &e) == nil {
			msg := e.Str("msg")
			r.byMsg[msg] = append(r.byMsg[msg], e)
		}
	}
}

// closeLog reads the rest of a process's log, which has ended, and
// closes it; what was read stays readable.
func (p *Process) closeLog() {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	p.read.refresh(p.LogPath)
	if p.read.f != nil {
		p.read.f.Close()
	}
	p.read.closed = true
}
