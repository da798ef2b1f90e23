// Command testsummary reads `go test -json` (of one or more go test runs,
// one after another) on standard input and writes what `go test` would
// have: for the packages named by -v everything, as it comes (the lab
// tests' logs, live); for the others only the output of failed tests and
// the package lines. At the end it lists the slowest top-level tests, so
// that the next slow test is seen when it is added, and it exits 1 unless
// every package passed or was skipped. Lines that are not JSON (the go
// command's own messages) are passed through, and fail the run if they say
// FAIL or panic.
//
// Usage: go test -json ./... 2>&1 | go run ./scripts/testsummary [-v regexp] [-slowest n]
package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"
)

// event is one line of `go test -json`: a test2json TestEvent, or a build
// event (ImportPath) the go command interleaves with them.
type event struct {
	Time       time.Time
	Action     string
	Package    string
	ImportPath string
	Test       string
	Elapsed    float64
	Output     string
}

func main() {
	verbose := flag.String("v", "", "regular expression of packages whose whole output is shown")
	slowest := flag.Int("slowest", 10, "how many of the slowest tests to list")
	flag.Parse()
	var re *regexp.Regexp
	if *verbose != "" {
		var err error
		if re, err = regexp.Compile(*verbose); err != nil {
			fmt.Fprintln(os.Stderr, "testsummary: -v:", err)
			os.Exit(2)
		}
	}
	s := newSummary(os.Stdout, re)
	if err := s.read(os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(2)
	}
	s.report(*slowest)
	if !s.ok() {
		os.Exit(1)
	}
}

type testKey struct{ pkg, test string }

// result is a finished top-level test.
type result struct {
	testKey
	action  string
	elapsed time.Duration
}

type summary struct {
	w       io.Writer
	verbose *regexp.Regexp

	// held is the output of each running test of a quiet package, shown
	// only if the test fails.
	held     map[testKey][]string
	results  []result
	packages map[string]string // package -> its final action
	failed   []string          // what failed, for the last line
}

func newSummary(w io.Writer, verbose *regexp.Regexp) *summary {
	return &summary{w: w, verbose: verbose, held: map[testKey][]string{}, packages: map[string]string{}}
}

func (s *summary) read(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		var e event
		if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &e) != nil || e.Action == "" {
			fmt.Fprintln(s.w, line)
			if strings.HasPrefix(line, "FAIL") || strings.HasPrefix(line, "panic:") {
				s.failed = append(s.failed, line)
			}
			continue
		}
		s.event(e)
	}
	return sc.Err()
}

func (s *summary) loud(pkg string) bool { return s.verbose != nil && s.verbose.MatchString(pkg) }

func (s *summary) event(e event) {
	switch e.Action {
	case "build-output":
		fmt.Fprint(s.w, e.Output)
		return
	case "build-fail":
		s.failed = append(s.failed, "build of "+e.ImportPath)
		return
	}
	key := testKey{e.Package, e.Test}
	switch {
	case e.Test == "" && e.Action == "output":
		// The package's own lines: ok, FAIL, panics; and PASS, which go
		// test shows only in verbose mode.
		if s.loud(e.Package) || e.Output != "PASS\n" {
			fmt.Fprint(s.w, e.Output)
		}
	case e.Test == "" && (e.Action == "pass" || e.Action == "fail" || e.Action == "skip"):
		s.packages[e.Package] = e.Action
		if e.Action == "fail" {
			s.failed = append(s.failed, e.Package)
		}
	case e.Test == "":
	case e.Action == "output" && s.loud(e.Package):
		fmt.Fprint(s.w, e.Output)
	case e.Action == "output":
		if !framing(e.Output) {
			s.held[key] = append(s.held[key], e.Output)
		}
	case e.Action == "pass" || e.Action == "fail" || e.Action == "skip":
		if e.Action == "fail" && !s.loud(e.Package) {
			for _, o := range s.held[key] {
				fmt.Fprint(s.w, o)
			}
		}
		delete(s.held, key)
		if !strings.Contains(e.Test, "/") {
			s.results = append(s.results, result{key, e.Action, time.Duration(e.Elapsed * float64(time.Second))})
		}
		if e.Action == "fail" && !strings.Contains(e.Test, "/") {
			s.failed = append(s.failed, e.Package+" "+e.Test)
		}
	}
}

// framing reports whether a line of verbose output is only go test's
// marking of where a test runs, which the quiet output leaves out.
func framing(out string) bool {
	for _, p := range []string{"=== RUN", "=== PAUSE", "=== CONT", "=== NAME"} {
		if strings.HasPrefix(out, p) {
			return true
		}
	}
	return false
}

func (s *summary) report(n int) {
	rs := slices.Clone(s.results)
	slices.SortStableFunc(rs, func(a, b result) int { return cmp.Compare(b.elapsed, a.elapsed) })
	rs = rs[:min(n, len(rs))]
	if len(rs) > 0 {
		fmt.Fprintf(s.w, "\nslowest tests:\n")
		for _, r := range rs {
			mark := ""
			if r.action != "pass" {
				mark = " (" + r.action + ")"
			}
			fmt.Fprintf(s.w, "  %7.2fs  %s  %s%s\n", r.elapsed.Seconds(), r.test, shortPkg(r.pkg), mark)
		}
	}
	if s.ok() {
		fmt.Fprintf(s.w, "\nall %d packages passed\n", len(s.packages))
		return
	}
	if len(s.packages) == 0 {
		s.failed = append(s.failed, "no package ran")
	}
	fmt.Fprintf(s.w, "\nFAILED: %s\n", strings.Join(s.failed, "; "))
}

func (s *summary) ok() bool { return len(s.failed) == 0 && len(s.packages) > 0 }

// shortPkg drops the module's path from a package's.
func shortPkg(p string) string { return strings.TrimPrefix(p, "github.com/vtepd/vtepd/") }
