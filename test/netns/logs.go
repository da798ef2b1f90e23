package netns

import (
	"bufio"
	"encoding/json"
	"strings"
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
	var out []LogEntry
	sc := bufio.NewScanner(strings.NewReader(p.Log()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var e LogEntry
		if json.Unmarshal(line, &e) == nil && e.Str("msg") == msg {
			out = append(out, e)
		}
	}
	return out
}
