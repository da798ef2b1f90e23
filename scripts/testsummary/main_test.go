package main

import (
	"regexp"
	"strings"
	"testing"
)

// stream is go test -json of two packages: store quiet (one test passes,
// one fails), test/netns loud, with a line from the go command between.
const stream = `{"Action":"start","Package":"github.com/vtepd/vtepd/store"}
{"Action":"run","Package":"github.com/vtepd/vtepd/store","Test":"TestA"}
{"Action":"output","Package":"github.com/vtepd/vtepd/store","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"output","Package":"github.com/vtepd/vtepd/store","Test":"TestA","Output":"    a_test.go:1: quiet detail\n"}
{"Action":"pass","Package":"github.com/vtepd/vtepd/store","Test":"TestA","Elapsed":1.5}
{"Action":"output","Package":"github.com/vtepd/vtepd/store","Test":"TestB","Output":"    b_test.go:2: what broke\n"}
{"Action":"output","Package":"github.com/vtepd/vtepd/store","Test":"TestB/sub","Output":"    b_test.go:3: in a subtest\n"}
{"Action":"fail","Package":"github.com/vtepd/vtepd/store","Test":"TestB/sub","Elapsed":9}
{"Action":"output","Package":"github.com/vtepd/vtepd/store","Test":"TestB","Output":"--- FAIL: TestB (0.20s)\n"}
{"Action":"fail","Package":"github.com/vtepd/vtepd/store","Test":"TestB","Elapsed":0.2}
{"Action":"output","Package":"github.com/vtepd/vtepd/store","Output":"FAIL\tgithub.com/vtepd/vtepd/store\t1.8s\n"}
{"Action":"fail","Package":"github.com/vtepd/vtepd/store","Elapsed":1.8}
go: a line of the go command's own
{"Action":"output","Package":"github.com/vtepd/vtepd/test/netns","Test":"TestCore","Output":"=== RUN   TestCore\n"}
{"Action":"output","Package":"github.com/vtepd/vtepd/test/netns","Test":"TestCore","Output":"    core_test.go:9: loud detail\n"}
{"Action":"pass","Package":"github.com/vtepd/vtepd/test/netns","Test":"TestCore","Elapsed":12.25}
{"Action":"output","Package":"github.com/vtepd/vtepd/test/netns","Output":"ok  \tgithub.com/vtepd/vtepd/test/netns\t13s\n"}
{"Action":"pass","Package":"github.com/vtepd/vtepd/test/netns","Elapsed":13}
`

func summarize(t *testing.T, in string) (string, *summary) {
	t.Helper()
	var out strings.Builder
	s := newSummary(&out, regexp.MustCompile(`test/netns`))
	if err := s.read(strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	s.report(10)
	return out.String(), s
}

func TestSummary(t *testing.T) {
	out, s := summarize(t, stream)
	for _, want := range []string{
		"what broke", "in a subtest", "--- FAIL: TestB", // a failed test's output, subtests included
		"FAIL\tgithub.com/vtepd/vtepd/store", "go: a line of the go command's own",
		"=== RUN   TestCore", "loud detail", // everything of a loud package
		"slowest tests:\n    12.25s  TestCore  test/netns\n     1.50s  TestA  store\n     0.20s  TestB  store (fail)\n",
		"FAILED: github.com/vtepd/vtepd/store TestB; github.com/vtepd/vtepd/store",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for _, not := range []string{"quiet detail", "=== RUN   TestA", "TestB/sub  store"} {
		if strings.Contains(out, not) {
			t.Errorf("output has %q, which go test would not show:\n%s", not, out)
		}
	}
	if s.ok() {
		t.Errorf("a run with a failed package counts as passed")
	}
}

func TestSummaryPasses(t *testing.T) {
	in := `{"Action":"pass","Package":"github.com/vtepd/vtepd/miss","Test":"TestX","Elapsed":0.1}
{"Action":"output","Package":"github.com/vtepd/vtepd/miss","Output":"PASS\n"}
{"Action":"output","Package":"github.com/vtepd/vtepd/miss","Output":"ok  \tgithub.com/vtepd/vtepd/miss\t0.2s\n"}
{"Action":"pass","Package":"github.com/vtepd/vtepd/miss","Elapsed":0.2}
{"Action":"output","Package":"github.com/vtepd/vtepd/subnetfile","Output":"?   \tgithub.com/vtepd/vtepd/subnetfile\t[no test files]\n"}
{"Action":"skip","Package":"github.com/vtepd/vtepd/subnetfile","Elapsed":0}
`
	out, s := summarize(t, in)
	if !s.ok() || !strings.Contains(out, "all 2 packages passed") {
		t.Errorf("a passing run: ok %v\n%s", s.ok(), out)
	}
	if strings.Contains(out, "PASS\n") {
		t.Errorf("a quiet package's PASS line is shown, which go test does only with -v:\n%s", out)
	}
}

func TestSummaryFailsWithoutPackages(t *testing.T) {
	for _, in := range []string{
		"",
		"# github.com/vtepd/vtepd/store\nstore/x.go:1: syntax error\nFAIL\tgithub.com/vtepd/vtepd/store [setup failed]\n",
		`{"Action":"build-output","ImportPath":"github.com/vtepd/vtepd/store [github.com/vtepd/vtepd/store.test]","Output":"store/x.go:1: undefined: y\n"}
{"Action":"build-fail","ImportPath":"github.com/vtepd/vtepd/store [github.com/vtepd/vtepd/store.test]"}
{"Action":"pass","Package":"github.com/vtepd/vtepd/miss","Elapsed":0.2}
`,
	} {
		out, s := summarize(t, in)
		if s.ok() || !strings.Contains(out, "FAILED") {
			t.Errorf("input %q counts as passed:\n%s", in, out)
		}
	}
}
